#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, then exits;
# the README's test command is `tests/setup.sh && cargo test --workspace`.
#   - pika and pytest (tests/python, run by tests/pika_suite.rs), and celery
#     (its worker pools in tests/python/workers, run by
#     tests/worker_pool_suite.rs)
#   - Debian's rabbitmq-server package, only for /usr/bin/rabbitmqadmin (the
#     v1 script tests/rabbitmqadmin.rs drives against Warren). Its RabbitMQ
#     is never started: policy-rc.d refuses service starts during install.
#   - Debian's chromium, nodejs and npm, for the dashboard's browser tests
#     (tests/ui_e2e.rs, which runs `npm ci` in tests/e2e itself to fetch
#     playwright-core).
#   - Debian's prometheus, which tests/prometheus.rs runs against a broker
#     (its service is not started either).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -r tests/python/requirements.txt

need=()
[ -x /usr/bin/rabbitmqadmin ] || need+=(rabbitmq-server)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
[ -x /usr/bin/prometheus ] || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    [ -z "$made_policy" ] || $SUDO rm -f /usr/sbin/policy-rc.d
fi
