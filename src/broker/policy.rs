//! Policies and operator policies: their validation (RabbitMQ's rules and
//! error texts), which one applies to a queue or exchange, and the
//! effective settings of a queue from its `x-` arguments and the two
//! policies.
//!
//! A vhost owns its [`PolicySet`]; queues and exchanges hold the
//! [`Applied`] pair that matched them, recomputed by the vhost whenever a
//! policy or the object changes (see `Vhost::put_policy`). Everything here
//! is pure: no I/O, no locks.
//!
//! ## Which policy applies
//! One policy and one operator policy per object: among those whose
//! `apply-to` admits the object's kind and whose `pattern` matches its
//! name, the highest `priority` wins. RabbitMQ breaks ties by the order of
//! its parameter table (a hash order, so effectively arbitrary); Warren
//! picks the name that sorts first, so the choice is stable.
//!
//! ## How arguments and policies combine
//! As RabbitMQ 3.13's classic queue (`rabbit_amqqueue_process:
//! process_args_policy`, `rabbit_queue_type_util:args_policy_lookup`),
//! after the policy and operator policy are merged
//! (`rabbit_policy:merge_operator_definitions`):
//!
//! | key | policy + operator policy | argument + that |
//! |---|---|---|
//! | `message-ttl`, `expires`, `max-length`, `max-length-bytes`, `delivery-limit` | lower | lower |
//! | `consumer-timeout` (policy only) | – | lower |
//! | `consumer-timeout-action` (Warren's, policy only) | – | argument's |
//! | `overflow` | operator policy's | argument's |
//! | `dead-letter-exchange`, `dead-letter-routing-key` (policy only) | – | argument's |
//! | `alternate-exchange` (exchanges, policy only) | – | argument's |

use serde_json::{Map, Number, Value as J};
use std::collections::BTreeMap;
use std::sync::Arc;
use warren_exchanges::Table;

/// A policy or an operator policy (RabbitMQ's two runtime-parameter
/// components; operator policies take only a few numeric keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    Policy,
    Operator,
}

/// What a policy applies to (`apply-to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyTo {
    All,
    Queues,
    Exchanges,
}

impl ApplyTo {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyTo::All => "all",
            ApplyTo::Queues => "queues",
            ApplyTo::Exchanges => "exchanges",
        }
    }
}

/// The kind of object a policy is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Queue,
    Exchange,
}

/// A validated policy, as stored and listed.
#[derive(Debug)]
pub struct Policy {
    pub vhost: String,
    pub name: String,
    pub pattern: String,
    regex: regex::Regex,
    pub apply_to: ApplyTo,
    /// Any JSON number, as RabbitMQ takes it (integers in practice).
    pub priority: Number,
    pub definition: Map<String, J>,
}

/// Why a policy was refused: RabbitMQ's text, for a 400's `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError(pub String);

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Policy {
    /// A policy from a PUT body or a definitions entry (`pattern`,
    /// `definition`, optional `priority` (0) and `apply-to` (`all`); other
    /// fields such as `name` and `vhost` are ignored), checked as RabbitMQ
    /// checks it. Errors carry RabbitMQ's texts: `[{key_missing,pattern}]`,
    /// or `Validation failed` with one line per problem; for policies (not
    /// operator policies) the management API escapes `<` and `>`, as
    /// RabbitMQ's does.
    pub fn parse(
        kind: PolicyKind,
        vhost: &str,
        name: &str,
        body: &Map<String, J>,
    ) -> Result<Policy, PolicyError> {
        let missing: Vec<String> = ["pattern", "definition"]
            .iter()
            .filter(|k| !body.contains_key(**k))
            .map(|k| format!("{{key_missing,{k}}}"))
            .collect();
        if !missing.is_empty() {
            return Err(PolicyError(format!("[{}]", missing.join(","))));
        }
        let mut errors = Vec::new();
        // RabbitMQ lists them in this order (its validations fold into a
        // list head-first).
        let definition = match check_definition(kind, &body["definition"]) {
            Ok(d) => Some(d),
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let apply_to = match body.get("apply-to") {
            None => Some(ApplyTo::All),
            Some(J::String(s)) if s == "all" => Some(ApplyTo::All),
            Some(J::String(s)) if s == "queues" => Some(ApplyTo::Queues),
            Some(J::String(s)) if s == "exchanges" => Some(ApplyTo::Exchanges),
            Some(other) => {
                let shown = match other {
                    J::String(s) => s.clone(),
                    o => o.to_string(),
                };
                errors.push(format!(
                    "apply-to '{shown}' unrecognised; should be 'queues', 'exchanges' or 'all'"
                ));
                None
            }
        };
        let regex = match &body["pattern"] {
            J::String(p) => match regex::Regex::new(&super::authz::pcre_braces(p)) {
                Ok(r) => Some((p.clone(), r)),
                Err(e) => {
                    let why = e.to_string();
                    let last = why.lines().last().unwrap_or_default().trim();
                    let last = last.strip_prefix("error: ").unwrap_or(last);
                    errors.push(format!(
                        "pattern should be regular expression but is invalid: {{\"{last}\",0}}"
                    ));
                    None
                }
            },
            other => {
                errors.push(format!(
                    "pattern should be a binary but was {}",
                    erlang_term(other)
                ));
                None
            }
        };
        let priority = match body.get("priority") {
            None => Some(Number::from(0)),
            Some(J::Number(n)) => Some(n.clone()),
            Some(other) => {
                errors.push(format!(
                    "priority should be a number, actually was {}",
                    erlang_term(other)
                ));
                None
            }
        };
        match (definition, apply_to, regex, priority) {
            (Some(definition), Some(apply_to), Some((pattern, regex)), Some(priority))
                if errors.is_empty() =>
            {
                Ok(Policy {
                    vhost: vhost.to_owned(),
                    name: name.to_owned(),
                    pattern,
                    regex,
                    apply_to,
                    priority,
                    definition,
                })
            }
            _ => {
                let text = format!("Validation failed\n\n{}\n", errors.join("\n"));
                Err(PolicyError(match kind {
                    PolicyKind::Policy => escape_html_tags(&text),
                    PolicyKind::Operator => text,
                }))
            }
        }
    }

    /// RabbitMQ's JSON for a policy (API and definitions).
    pub fn to_json(&self) -> J {
        serde_json::json!({
            "vhost": self.vhost,
            "name": self.name,
            "pattern": self.pattern,
            "apply-to": self.apply_to.as_str(),
            "definition": self.definition,
            "priority": self.priority,
        })
    }

    fn priority_f64(&self) -> f64 {
        self.priority.as_f64().unwrap_or(0.0)
    }

    /// Whether this policy is for an object of `target` kind named `name`.
    pub fn matches(&self, target: Target, name: &str) -> bool {
        let kind_ok = matches!(
            (self.apply_to, target),
            (ApplyTo::All, _)
                | (ApplyTo::Queues, Target::Queue)
                | (ApplyTo::Exchanges, Target::Exchange)
        );
        kind_ok && self.regex.is_match(name)
    }
}

/// `<` and `>` as HTML entities (`rabbit_mgmt_format:escape_html_tags`).
fn escape_html_tags(s: &str) -> String {
    s.replace('<', "&lt;").replace('>', "&gt;")
}

/// A JSON value as Erlang's `~p` prints the term RabbitMQ decodes it to,
/// for error texts (`<<"x">>`, `[1,2]`, `#{<<"a">> => 1}`).
pub fn erlang_term(v: &J) -> String {
    match v {
        J::String(s) => {
            let esc = s.replace('\\', "\\\\").replace('"', "\\\"");
            if s.is_ascii() {
                format!("<<\"{esc}\">>")
            } else {
                format!("<<\"{esc}\"/utf8>>")
            }
        }
        J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.1}"),
            (_, _, Some(f)) => f.to_string(),
            _ => n.to_string(),
        },
        J::Bool(b) => b.to_string(),
        J::Null => "null".to_owned(),
        J::Array(a) => format!(
            "[{}]",
            a.iter().map(erlang_term).collect::<Vec<_>>().join(",")
        ),
        J::Object(o) => format!(
            "#{{{}}}",
            o.iter()
                .map(|(k, v)| format!(
                    "{} => {}",
                    erlang_term(&J::String(k.clone())),
                    erlang_term(v)
                ))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// Numeric keys where the lower of two values wins.
const LOWER_WINS: &[&str] = &[
    "message-ttl",
    "expires",
    "max-length",
    "max-length-bytes",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "delivery-limit",
    "consumer-timeout",
];

/// The keys an operator policy may set (RabbitMQ 3.13's
/// `operator_policy_validator`s).
pub const OPERATOR_KEYS: &[&str] = &[
    "expires",
    "message-ttl",
    "max-length",
    "max-length-bytes",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "delivery-limit",
    "queue-version",
    "overflow",
];

/// The keys Warren acts on; the others are validated and kept only.
pub const APPLIED_KEYS: &[&str] = &["alternate-exchange"];

/// One key's check: `Ok` or RabbitMQ's text for the bad value.
fn check_key(key: &str, v: &J) -> Option<Result<(), String>> {
    // An integer >= min (u64s past i64::MAX are integers too).
    let int_at_least = |min: i64| v.as_i64().map_or(v.as_u64().is_some(), |i| i >= min);
    let is_str = v.is_string();
    let one_of = |opts: &[&str]| v.as_str().is_some_and(|s| opts.contains(&s));
    let (ok, what) = match key {
        "alternate-exchange" => (is_str, "is not a valid alternate exchange name"),
        "consumer-timeout" => (int_at_least(0), "is not a valid consumer timeout"),
        // Warren's own key (what a consumer timeout does).
        "consumer-timeout-action" => (
            one_of(&["close", "cancel"]),
            "is not a valid consumer timeout action",
        ),
        "dead-letter-exchange" => (is_str, "is not a valid dead letter exchange name"),
        "dead-letter-routing-key" => (is_str, "is not a valid dead letter routing key"),
        "dead-letter-strategy" => (
            one_of(&["at-most-once", "at-least-once"]),
            "is not a valid dead letter strategy",
        ),
        "message-ttl" => (int_at_least(0), "is not a valid message TTL"),
        "expires" => (int_at_least(1), "is not a valid queue expiry"),
        "max-length" => (int_at_least(0), "is not a valid maximum length"),
        "max-length-bytes" => (int_at_least(0), "is not a valid maximum length in bytes"),
        "max-in-memory-length" | "max-in-memory-bytes" => {
            (int_at_least(0), "is not a valid maximum memory in bytes")
        }
        "queue-mode" => (
            one_of(&["default", "lazy"]),
            "is not a valid queue-mode value",
        ),
        "queue-version" => (
            v.as_i64().is_some_and(|i| i == 1 || i == 2),
            "is not a valid queue-version value",
        ),
        "overflow" => (
            one_of(&["drop-head", "reject-publish", "reject-publish-dlx"]),
            "is not a valid overflow value",
        ),
        "delivery-limit" => (int_at_least(0), "is not a valid delivery limit"),
        "max-age" => (
            v.as_str().is_some_and(valid_max_age),
            "is not a valid max age",
        ),
        "stream-max-segment-size-bytes" => (
            v.as_i64().is_some_and(|i| (0..=3_000_000_000).contains(&i)),
            "is not a valid segment size",
        ),
        "queue-leader-locator" => (
            one_of(&["client-local", "balanced", "random", "least-leaders"]),
            "is not a valid queue leader locator value",
        ),
        "initial-cluster-size" => (int_at_least(0), "is not a valid cluster size"),
        "queue-master-locator" => (
            one_of(&["min-masters", "client-local", "random"]),
            "invalid queue-master-locator value",
        ),
        // Classic mirroring: kept, never acted on (checked as a group below).
        "ha-mode"
        | "ha-params"
        | "ha-sync-mode"
        | "ha-sync-batch-size"
        | "ha-promote-on-shutdown"
        | "ha-promote-on-failure" => (true, ""),
        _ => return None,
    };
    Some(if ok {
        Ok(())
    } else {
        Err(format!("{} {what}", erlang_term(v)))
    })
}

/// `rabbit_amqqueue:check_max_age`: a number and a unit (Y, M, D, h, m, s).
fn valid_max_age(s: &str) -> bool {
    let unit = s.chars().last();
    let digits = &s[..s.len().saturating_sub(1)];
    matches!(unit, Some('Y' | 'M' | 'D' | 'h' | 'm' | 's'))
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Checks a definition as `rabbit_policy:validation/3`: a non-empty object
/// whose keys each have a validator; the first bad value is reported, then
/// the unknown keys (all of them, sorted).
fn check_definition(kind: PolicyKind, d: &J) -> Result<Map<String, J>, String> {
    let m = match d {
        J::Object(m) if m.is_empty() => return Err("no policy provided".into()),
        J::Object(m) => m,
        other => {
            return Err(format!(
                "definition must be a dictionary: {}",
                erlang_term(other)
            ))
        }
    };
    let mut unknown = Vec::new();
    let mut sorted: Vec<(&String, &J)> = m.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in &sorted {
        if kind == PolicyKind::Operator && !OPERATOR_KEYS.contains(&k.as_str()) {
            unknown.push(format!(
                "{{{},{}}}",
                erlang_term(&J::String((*k).clone())),
                erlang_term(v)
            ));
            continue;
        }
        match check_key(k, v) {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e),
            None => unknown.push(format!(
                "{{{},{}}}",
                erlang_term(&J::String((*k).clone())),
                erlang_term(v)
            )),
        }
    }
    let ha = [
        "ha-params",
        "ha-sync-mode",
        "ha-sync-batch-size",
        "ha-promote-on-shutdown",
        "ha-promote-on-failure",
    ];
    if !m.contains_key("ha-mode") && ha.iter().any(|k| m.contains_key(*k)) {
        return Err(
            "ha-mode must be specified to specify ha-params, ha-sync-mode or ha-promote-on-shutdown"
                .into(),
        );
    }
    if !unknown.is_empty() {
        return Err(format!(
            "[{}] are not recognised policy settings",
            unknown.join(",")
        ));
    }
    Ok(m.clone())
}

/// A vhost's policies and operator policies, by name.
#[derive(Default)]
pub struct PolicySet {
    policies: BTreeMap<String, Arc<Policy>>,
    operator: BTreeMap<String, Arc<Policy>>,
}

impl PolicySet {
    fn map(&self, kind: PolicyKind) -> &BTreeMap<String, Arc<Policy>> {
        match kind {
            PolicyKind::Policy => &self.policies,
            PolicyKind::Operator => &self.operator,
        }
    }

    fn map_mut(&mut self, kind: PolicyKind) -> &mut BTreeMap<String, Arc<Policy>> {
        match kind {
            PolicyKind::Policy => &mut self.policies,
            PolicyKind::Operator => &mut self.operator,
        }
    }

    /// Adds or replaces a policy; returns whether one of that name existed.
    pub fn put(&mut self, kind: PolicyKind, p: Arc<Policy>) -> bool {
        self.map_mut(kind).insert(p.name.clone(), p).is_some()
    }

    pub fn remove(&mut self, kind: PolicyKind, name: &str) -> bool {
        self.map_mut(kind).remove(name).is_some()
    }

    pub fn get(&self, kind: PolicyKind, name: &str) -> Option<Arc<Policy>> {
        self.map(kind).get(name).cloned()
    }

    /// The policies of a kind, by name.
    pub fn list(&self, kind: PolicyKind) -> Vec<Arc<Policy>> {
        self.map(kind).values().cloned().collect()
    }

    /// The highest-priority policy of `kind` for the object; ties go to
    /// the name that sorts first.
    fn best(&self, kind: PolicyKind, target: Target, name: &str) -> Option<Arc<Policy>> {
        let mut best: Option<&Arc<Policy>> = None;
        for p in self.map(kind).values() {
            if p.matches(target, name) && best.is_none_or(|b| p.priority_f64() > b.priority_f64()) {
                best = Some(p);
            }
        }
        best.cloned()
    }

    /// The policy and operator policy for an object.
    pub fn matching(&self, target: Target, name: &str) -> Applied {
        Applied {
            policy: self.best(PolicyKind::Policy, target, name),
            operator: self.best(PolicyKind::Operator, target, name),
        }
    }
}

/// The policy and operator policy that apply to one queue or exchange.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub policy: Option<Arc<Policy>>,
    pub operator: Option<Arc<Policy>>,
}

impl Applied {
    /// Same policies (the same versions: a replaced policy is a new one).
    pub fn same(&self, other: &Applied) -> bool {
        let eq = |a: &Option<Arc<Policy>>, b: &Option<Arc<Policy>>| match (a, b) {
            (Some(x), Some(y)) => Arc::ptr_eq(x, y),
            (None, None) => true,
            _ => false,
        };
        eq(&self.policy, &other.policy) && eq(&self.operator, &other.operator)
    }

    pub fn policy_name(&self) -> Option<&str> {
        self.policy.as_ref().map(|p| p.name.as_str())
    }

    pub fn operator_name(&self) -> Option<&str> {
        self.operator.as_ref().map(|p| p.name.as_str())
    }

    /// A key's value from the policy and operator policy combined, and
    /// which of them it came from (`rabbit_policy:get/2`).
    pub fn get(&self, key: &str) -> Option<(&J, Source)> {
        let pol = self.policy.as_ref().and_then(|p| p.definition.get(key));
        let op = self.operator.as_ref().and_then(|p| p.definition.get(key));
        match (pol, op) {
            (None, None) => None,
            (Some(v), None) => Some((v, Source::Policy)),
            (None, Some(v)) => Some((v, Source::OperatorPolicy)),
            (Some(v), Some(o)) => {
                if LOWER_WINS.contains(&key) {
                    match (v.as_f64(), o.as_f64()) {
                        (Some(a), Some(b)) if b < a => Some((o, Source::OperatorPolicy)),
                        _ => Some((v, Source::Policy)),
                    }
                } else {
                    // overflow, queue-version, booleans: the operator's.
                    Some((o, Source::OperatorPolicy))
                }
            }
        }
    }

    /// RabbitMQ's `effective_policy_definition`: both definitions merged
    /// (`rabbit_policy:merge_operator_definitions`); `{}` when none applies.
    pub fn effective_definition(&self) -> Map<String, J> {
        let mut keys: Vec<&String> = Vec::new();
        for p in [&self.policy, &self.operator].into_iter().flatten() {
            keys.extend(p.definition.keys());
        }
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter_map(|k| self.get(k).map(|(v, _)| (k.clone(), v.clone())))
            .collect()
    }
}

/// Where an effective setting comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The queue's (or exchange's) own `x-` argument.
    Argument,
    Policy,
    OperatorPolicy,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Argument => "argument",
            Source::Policy => "policy",
            Source::OperatorPolicy => "operator-policy",
        }
    }
}

/// One effective setting and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub source: Source,
}

/// What a full queue does with another message (`overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

impl Overflow {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "drop-head" => Some(Overflow::DropHead),
            "reject-publish" => Some(Overflow::RejectPublish),
            "reject-publish-dlx" => Some(Overflow::RejectPublishDlx),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::DropHead => "drop-head",
            Overflow::RejectPublish => "reject-publish",
            Overflow::RejectPublishDlx => "reject-publish-dlx",
        }
    }
}

/// A queue's effective settings: the one place the queue's behaviour
/// (TTL, length limits, dead-lettering, delivery limit, consumer timeout)
/// is read from. `None`: not set anywhere. Times are milliseconds, lengths
/// messages, sizes bytes. Built by [`queue_settings`]; a queue keeps the
/// current one and is told when it changes (`Queue::settings`,
/// `Queue::settings_changed`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSettings {
    pub message_ttl: Option<Setting<u64>>,
    pub expires: Option<Setting<u64>>,
    pub max_length: Option<Setting<u64>>,
    pub max_length_bytes: Option<Setting<u64>>,
    pub overflow: Option<Setting<Overflow>>,
    pub dead_letter_exchange: Option<Setting<String>>,
    pub dead_letter_routing_key: Option<Setting<String>>,
    pub delivery_limit: Option<Setting<u64>>,
    pub consumer_timeout: Option<Setting<u64>>,
    /// Warren's `consumer-timeout-action` (`close`, `cancel`).
    pub consumer_timeout_action: Option<Setting<warren_queues::TimeoutAction>>,
}

impl QueueSettings {
    /// What the queue core acts on: the effective values, without their
    /// sources.
    pub fn limits(&self) -> warren_queues::QueueLimits {
        fn v<T: Clone>(s: &Option<Setting<T>>) -> Option<T> {
            s.as_ref().map(|s| s.value.clone())
        }
        warren_queues::QueueLimits {
            message_ttl: v(&self.message_ttl),
            max_length: v(&self.max_length),
            max_length_bytes: v(&self.max_length_bytes),
            overflow: match v(&self.overflow) {
                None | Some(Overflow::DropHead) => warren_queues::Overflow::DropHead,
                Some(Overflow::RejectPublish) => warren_queues::Overflow::RejectPublish,
                Some(Overflow::RejectPublishDlx) => warren_queues::Overflow::RejectPublishDlx,
            },
            dead_letter_exchange: v(&self.dead_letter_exchange),
            dead_letter_routing_key: v(&self.dead_letter_routing_key),
            delivery_limit: v(&self.delivery_limit),
            expires: v(&self.expires),
            consumer_timeout: v(&self.consumer_timeout),
            consumer_timeout_action: v(&self.consumer_timeout_action).unwrap_or_default(),
        }
    }

    /// `[(key, value, source)]` for the set ones, in RabbitMQ's key names
    /// (management API, dashboard).
    pub fn to_json(&self) -> J {
        let mut m = Map::new();
        let mut put = |k: &str, v: J, s: Source| {
            m.insert(
                k.to_owned(),
                serde_json::json!({"value": v, "source": s.as_str()}),
            );
        };
        let num = |o: &Option<Setting<u64>>| o.as_ref().map(|s| (J::from(s.value), s.source));
        for (k, v) in [
            ("message-ttl", num(&self.message_ttl)),
            ("expires", num(&self.expires)),
            ("max-length", num(&self.max_length)),
            ("max-length-bytes", num(&self.max_length_bytes)),
            ("delivery-limit", num(&self.delivery_limit)),
            ("consumer-timeout", num(&self.consumer_timeout)),
            (
                "overflow",
                self.overflow
                    .as_ref()
                    .map(|s| (J::from(s.value.as_str()), s.source)),
            ),
            (
                "consumer-timeout-action",
                self.consumer_timeout_action
                    .as_ref()
                    .map(|s| (J::from(s.value.as_str()), s.source)),
            ),
            (
                "dead-letter-exchange",
                self.dead_letter_exchange
                    .as_ref()
                    .map(|s| (J::from(s.value.clone()), s.source)),
            ),
            (
                "dead-letter-routing-key",
                self.dead_letter_routing_key
                    .as_ref()
                    .map(|s| (J::from(s.value.clone()), s.source)),
            ),
        ] {
            if let Some((v, s)) = v {
                put(k, v, s);
            }
        }
        J::Object(m)
    }
}

/// A non-negative integer from a policy value.
fn json_u64(v: &J) -> Option<u64> {
    v.as_u64()
}

/// A non-negative integer from an argument (any AMQP integer type).
fn arg_u64(args: &Table, key: &str) -> Option<u64> {
    args.get(key)
        .and_then(|v| v.as_i64())
        .and_then(|i| u64::try_from(i).ok())
}

/// The lower of argument and policy (`res_min`); the argument on a tie.
fn lower(args: &Table, applied: &Applied, key: &str) -> Option<Setting<u64>> {
    let arg = arg_u64(args, &format!("x-{key}"));
    let pol = applied
        .get(key)
        .and_then(|(v, s)| json_u64(v).map(|v| (v, s)));
    match (arg, pol) {
        (None, None) => None,
        (Some(a), None) => Some(Setting {
            value: a,
            source: Source::Argument,
        }),
        (None, Some((p, s))) => Some(Setting {
            value: p,
            source: s,
        }),
        (Some(a), Some((p, s))) => Some(if p < a {
            Setting {
                value: p,
                source: s,
            }
        } else {
            Setting {
                value: a,
                source: Source::Argument,
            }
        }),
    }
}

/// The argument `x-{key}` if set, else the policy's `key` (`res_arg`).
fn argument_first<T>(
    args: &Table,
    applied: &Applied,
    key: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Option<Setting<T>> {
    argument_or_policy(args, &format!("x-{key}"), applied, key, parse)
}

/// The argument `arg` if set, else the policy's `key`.
fn argument_or_policy<T>(
    args: &Table,
    arg: &str,
    applied: &Applied,
    key: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Option<Setting<T>> {
    if let Some(v) = args.get(arg).and_then(|v| v.as_str()).and_then(&parse) {
        return Some(Setting {
            value: v,
            source: Source::Argument,
        });
    }
    let (v, s) = applied.get(key)?;
    Some(Setting {
        value: parse(v.as_str()?)?,
        source: s,
    })
}

/// A queue's effective settings from its arguments and the policies that
/// apply to it, with RabbitMQ's combination rules (see the module docs).
pub fn queue_settings(args: &Table, applied: &Applied) -> QueueSettings {
    let text = |s: &str| Some(s.to_owned());
    QueueSettings {
        message_ttl: lower(args, applied, "message-ttl"),
        expires: lower(args, applied, "expires"),
        max_length: lower(args, applied, "max-length"),
        max_length_bytes: lower(args, applied, "max-length-bytes"),
        overflow: argument_first(args, applied, "overflow", Overflow::parse),
        dead_letter_exchange: argument_first(args, applied, "dead-letter-exchange", text),
        dead_letter_routing_key: argument_first(args, applied, "dead-letter-routing-key", text),
        delivery_limit: lower(args, applied, "delivery-limit"),
        consumer_timeout: lower(args, applied, "consumer-timeout"),
        consumer_timeout_action: argument_first(
            args,
            applied,
            "consumer-timeout-action",
            warren_queues::TimeoutAction::parse,
        ),
    }
}

/// An exchange's effective alternate exchange: its argument, else its
/// policy's (`rabbit_policy:get_arg/3`).
pub fn alternate_exchange(args: &Table, applied: &Applied) -> Option<String> {
    // Exchanges take it without the `x-` prefix.
    argument_or_policy(
        args,
        "alternate-exchange",
        applied,
        "alternate-exchange",
        |s| Some(s.to_owned()),
    )
    .map(|s| s.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use warren_exchanges::Value;

    fn policy(kind: PolicyKind, name: &str, pattern: &str, prio: i64, def: J) -> Arc<Policy> {
        let body = json!({"pattern": pattern, "definition": def, "priority": prio});
        Arc::new(Policy::parse(kind, "/", name, body.as_object().unwrap()).unwrap())
    }

    fn err(kind: PolicyKind, body: J) -> String {
        Policy::parse(kind, "/", "p", body.as_object().unwrap())
            .unwrap_err()
            .0
    }

    #[test]
    fn validation_errors_read_as_rabbitmqs() {
        let p = PolicyKind::Policy;
        assert_eq!(
            err(p, json!({"definition": {"max-length": 1}})),
            "[{key_missing,pattern}]"
        );
        assert_eq!(
            err(
                p,
                json!({"pattern": "a", "definition": {"max-length": "x"}})
            ),
            "Validation failed\n\n&lt;&lt;\"x\"&gt;&gt; is not a valid maximum length\n"
        );
        assert_eq!(
            err(p, json!({"pattern": "a", "definition": {"foo": 1}})),
            "Validation failed\n\n[{&lt;&lt;\"foo\"&gt;&gt;,1}] are not recognised policy settings\n"
        );
        assert_eq!(
            err(p, json!({"pattern": "a", "definition": {}})),
            "Validation failed\n\nno policy provided\n"
        );
        // Several problems: one line each, in RabbitMQ's order.
        assert_eq!(
            err(
                p,
                json!({"pattern": "(", "definition": {"max-length": -1}, "priority": "x", "apply-to": "b"})
            )
            .lines()
            .skip(2)
            .map(|l| l.split(':').next().unwrap().to_owned())
            .collect::<Vec<_>>(),
            [
                "-1 is not a valid maximum length",
                "apply-to 'b' unrecognised; should be 'queues', 'exchanges' or 'all'",
                "pattern should be regular expression but is invalid",
                "priority should be a number, actually was &lt;&lt;\"x\"&gt;&gt;",
            ]
        );
        // Operator policies: only their keys, and no escaping.
        assert_eq!(
            err(
                PolicyKind::Operator,
                json!({"pattern": "a", "definition": {"dead-letter-exchange": "x"}})
            ),
            "Validation failed\n\n[{<<\"dead-letter-exchange\">>,<<\"x\">>}] are not recognised policy settings\n"
        );
        assert_eq!(
            erlang_term(&json!({"a": [1, true, null]})),
            "#{<<\"a\">> => [1,true,null]}"
        );
    }

    #[test]
    fn the_highest_priority_wins_and_ties_go_to_the_first_name() {
        let mut set = PolicySet::default();
        let k = PolicyKind::Policy;
        set.put(k, policy(k, "low", "^q", 0, json!({"max-length": 1})));
        set.put(k, policy(k, "zz", "^q", 5, json!({"max-length": 2})));
        set.put(k, policy(k, "aa", "^q", 5, json!({"max-length": 3})));
        set.put(k, policy(k, "other", "^x", 9, json!({"max-length": 4})));
        let a = set.matching(Target::Queue, "q1");
        assert_eq!(a.policy_name(), Some("aa"));
        assert_eq!(a.operator_name(), None);
        assert_eq!(set.matching(Target::Queue, "nope").policy_name(), None);
        let body =
            json!({"pattern": "^q", "definition": {"max-length": 1}, "apply-to": "exchanges"});
        let ex = Policy::parse(k, "/", "ex", body.as_object().unwrap()).unwrap();
        assert!(!ex.matches(Target::Queue, "q"));
        assert!(ex.matches(Target::Exchange, "q"));
    }

    fn args(pairs: &[(&str, Value)]) -> Table {
        Table(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    fn applied(pol: Option<J>, op: Option<J>) -> Applied {
        Applied {
            policy: pol.map(|d| policy(PolicyKind::Policy, "p", ".*", 0, d)),
            operator: op.map(|d| policy(PolicyKind::Operator, "o", ".*", 0, d)),
        }
    }

    /// The combination table: (arguments, policy, operator policy) ->
    /// the effective setting of one key.
    #[test]
    fn arguments_and_policies_combine_as_rabbitmq() {
        use Source::*;
        let s = |v: u64, source| Some(Setting { value: v, source });
        let num = |a: Table, pol: Option<J>, op: Option<J>| {
            let qs = queue_settings(&a, &applied(pol, op));
            (qs.max_length, qs.message_ttl, qs.consumer_timeout)
        };
        let none = Table::default();
        // max-length: the lowest of argument, policy and operator policy.
        assert_eq!(num(none.clone(), None, None).0, None);
        assert_eq!(
            num(args(&[("x-max-length", Value::LongInt(10))]), None, None).0,
            s(10, Argument)
        );
        assert_eq!(
            num(none.clone(), Some(json!({"max-length": 5})), None).0,
            s(5, Policy)
        );
        assert_eq!(
            num(
                args(&[("x-max-length", Value::LongInt(10))]),
                Some(json!({"max-length": 5})),
                None
            )
            .0,
            s(5, Policy)
        );
        assert_eq!(
            num(
                args(&[("x-max-length", Value::LongInt(3))]),
                Some(json!({"max-length": 5})),
                None
            )
            .0,
            s(3, Argument)
        );
        assert_eq!(
            num(
                args(&[("x-max-length", Value::LongInt(10))]),
                Some(json!({"max-length": 5})),
                Some(json!({"max-length": 3}))
            )
            .0,
            s(3, OperatorPolicy)
        );
        assert_eq!(
            num(
                none.clone(),
                Some(json!({"max-length": 2})),
                Some(json!({"max-length": 3}))
            )
            .0,
            s(2, Policy)
        );
        // message-ttl likewise; consumer-timeout from argument or policy.
        assert_eq!(
            num(
                args(&[("x-message-ttl", Value::LongLongInt(100))]),
                None,
                Some(json!({"message-ttl": 50}))
            )
            .1,
            s(50, OperatorPolicy)
        );
        assert_eq!(
            num(
                args(&[("x-consumer-timeout", Value::LongInt(9))]),
                Some(json!({"consumer-timeout": 7})),
                None
            )
            .2,
            s(7, Policy)
        );
        // Warren's consumer-timeout-action: the argument wins.
        let cancel = warren_queues::TimeoutAction::Cancel;
        let pol = json!({"consumer-timeout-action": "cancel"});
        let qs = queue_settings(&args(&[]), &applied(Some(pol.clone()), None));
        assert_eq!(qs.limits().consumer_timeout_action, cancel);
        let a = args(&[(
            "x-consumer-timeout-action",
            Value::LongString(b"close".to_vec()),
        )]);
        let qs = queue_settings(&a, &applied(Some(pol), None));
        assert_eq!(
            qs.consumer_timeout_action.map(|s| (s.value, s.source)),
            Some((warren_queues::TimeoutAction::Close, Argument))
        );
        // Dead-lettering and overflow: the argument wins over any policy.
        let a = args(&[
            (
                "x-dead-letter-exchange",
                Value::LongString(b"arg-dlx".to_vec()),
            ),
            ("x-overflow", Value::LongString(b"reject-publish".to_vec())),
        ]);
        let pol = json!({"dead-letter-exchange": "pol-dlx", "dead-letter-routing-key": "rk", "overflow": "drop-head"});
        let qs = queue_settings(&a, &applied(Some(pol.clone()), None));
        assert_eq!(
            qs.dead_letter_exchange,
            Some(Setting {
                value: "arg-dlx".into(),
                source: Argument
            })
        );
        assert_eq!(
            qs.dead_letter_routing_key,
            Some(Setting {
                value: "rk".into(),
                source: Policy
            })
        );
        assert_eq!(
            qs.overflow,
            Some(Setting {
                value: Overflow::RejectPublish,
                source: Argument
            })
        );
        // Overflow from both policies: the operator policy's.
        let qs = queue_settings(
            &none,
            &applied(Some(pol), Some(json!({"overflow": "reject-publish-dlx"}))),
        );
        assert_eq!(
            qs.overflow,
            Some(Setting {
                value: Overflow::RejectPublishDlx,
                source: OperatorPolicy
            })
        );
        // Alternate exchange: the argument, else the policy.
        let ae = applied(Some(json!({"alternate-exchange": "pol-ae"})), None);
        assert_eq!(alternate_exchange(&none, &ae).as_deref(), Some("pol-ae"));
        let a = args(&[("alternate-exchange", Value::LongString(b"arg-ae".to_vec()))]);
        assert_eq!(alternate_exchange(&a, &ae).as_deref(), Some("arg-ae"));
    }

    #[test]
    fn the_effective_definition_merges_both() {
        let a = applied(
            Some(json!({"max-length": 5, "dead-letter-exchange": "d"})),
            Some(json!({"max-length": 3, "message-ttl": 1000})),
        );
        assert_eq!(
            J::Object(a.effective_definition()),
            json!({"dead-letter-exchange": "d", "max-length": 3, "message-ttl": 1000})
        );
        assert_eq!(
            J::Object(Applied::default().effective_definition()),
            json!({})
        );
    }
}
