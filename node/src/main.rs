//! `witan`: parses flags, starts a member, stops it cleanly on SIGTERM or
//! SIGINT. Everything else lives in the library.

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;
use witan_node::config::{Config, Flags};

fn init_logging(format: &str) {
    let filter = EnvFilter::try_from_env("WITAN_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    init_logging(&flags.log_format);
    let config = Config::from_flags(flags).context("invalid configuration")?;
    let running = witan_node::node::start(config)
        .await
        .context("starting member")?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
