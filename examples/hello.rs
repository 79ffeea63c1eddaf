//! `hello`: the README's lapin example as a complete program. It declares
//! the queue `hello`, publishes one message with a publisher confirm,
//! consumes it back and acknowledges it.
//!
//! ```text
//! cargo run --release                       # the broker, in one terminal
//! cargo run --release --example hello       # this, in another
//! cargo run --release --example hello -- amqp://guest:guest@localhost:5672/%2f
//! ```
//!
//! lapin's URI parser takes host names only: an IP address in the URI is
//! replaced by `localhost`.

use futures_lite::stream::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

#[tokio::main]
async fn main() -> Result<(), lapin::Error> {
    let uri = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "amqp://guest:guest@localhost:5672/%2f".into());
    let conn = Connection::connect(&uri, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    ch.queue_declare(
        "hello".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;

    // The second await waits for the broker's confirm (basic.ack).
    ch.basic_publish(
        "".into(),
        "hello".into(),
        BasicPublishOptions::default(),
        b"Hello, Warren",
        BasicProperties::default(),
    )
    .await?
    .await?;

    let mut consumer = ch
        .basic_consume(
            "hello".into(),
            "hello-example".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    if let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        delivery.ack(BasicAckOptions::default()).await?;
        // An example's output is its point: a plain line on stdout.
        let body = String::from_utf8_lossy(&delivery.data);
        std::io::Write::write_all(
            &mut std::io::stdout(),
            format!("received: {body}\n").as_bytes(),
        )
        .expect("stdout");
    }
    conn.close(200, "bye".into()).await?;
    Ok(())
}
