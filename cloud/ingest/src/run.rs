//! `outpost-ingest run`: migrations, the workers, the sources (broker, pull), `/metrics`, the
//! retention pass, and a clean stop on SIGTERM or Ctrl-C.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use outpost_batch::Dictionaries;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::db::{self, Partitions};
use crate::metrics::{self, Counters};
use crate::worker::{self, Shared};

/// How often expired partitions are looked for.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

pub async fn run(config: Config) -> anyhow::Result<()> {
    let database = db::Connector::new(&config.database)?;
    let mut client = database.connect_at_start().await?;
    let applied = db::migrate(&mut client)
        .await
        .context("cannot bring the schema up to date")?;
    if !applied.is_empty() {
        tracing::info!(message = "Schema migrated.", versions = ?applied);
    }
    let dictionaries = match &config.dictionaries {
        Some(dir) => worker::load_dictionaries(dir)
            .with_context(|| format!("cannot read dictionaries from {}", dir.display()))?,
        None => Dictionaries::new(),
    };
    let counters = Arc::new(Counters::default());
    let shared = Arc::new(Shared {
        database: database.clone(),
        replica: config.replica.clone(),
        window: config.window(),
        counters: counters.clone(),
        partitions: Arc::new(Partitions::default()),
        dictionaries: RwLock::new(Arc::new(dictionaries)),
        dictionary_dir: config.dictionaries.clone(),
    });
    let (jobs, queue) = mpsc::channel(config.database.connections * 2);
    let queue = Arc::new(Mutex::new(queue));
    let mut workers = JoinSet::new();
    for _ in 0..config.database.connections {
        workers.spawn(worker::run(shared.clone(), queue.clone()));
    }

    let listener = tokio::net::TcpListener::bind(config.metrics.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (metrics.listen)",
                config.metrics.listen
            )
        })?;
    let scrape = Arc::new(Scrape {
        replica: config.replica.clone(),
        database,
        counters: counters.clone(),
        client: Mutex::new(None),
    });
    let app = Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(scrape);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(message = "The metrics listener stopped.", error = %e);
        }
    });

    let window = config.window();
    tokio::spawn(async move {
        loop {
            match db::enforce_retention(&client, window).await {
                Ok(dropped) if !dropped.is_empty() => {
                    tracing::info!(message = "Expired partitions dropped.", partitions = ?dropped);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(message = "Retention pass failed.", error = %e),
            }
            tokio::time::sleep(RETENTION_EVERY).await;
        }
    });

    let (stop_tx, stop) = watch::channel(false);
    let mut sources = JoinSet::new();
    if let Some(mqtt) = config.mqtt.clone() {
        sources.spawn(crate::mqtt::run(
            mqtt,
            config.replica.clone(),
            jobs.clone(),
            counters.clone(),
            stop.clone(),
        ));
    }
    if let Some(pull) = config.pull.clone() {
        for gateway in pull.gateways {
            let (jobs, counters, stop) = (jobs.clone(), counters.clone(), stop.clone());
            sources.spawn(async move {
                crate::pull::run(gateway, pull.interval, jobs, counters, stop).await;
                Ok(())
            });
        }
    }
    drop(jobs);
    tracing::info!(message = "Ingesting.", replica = %config.replica);

    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        Some(ended) = sources.join_next() => {
            ended.context("a source panicked")??;
        }
    }
    tracing::info!(message = "Stopping: finishing the batches in hand.");
    let _ = stop_tx.send(true);
    while let Some(ended) = sources.join_next().await {
        if let Ok(Err(e)) = ended {
            tracing::warn!(message = "A source ended with an error.", error = %e);
        }
    }
    // The sources are gone, so the queue closes and the workers end.
    while workers.join_next().await.is_some() {}
    Ok(())
}

struct Scrape {
    replica: String,
    database: db::Connector,
    counters: Arc<Counters>,
    client: Mutex<Option<tokio_postgres::Client>>,
}

async fn serve_metrics(
    State(scrape): State<Arc<Scrape>>,
) -> ([(&'static str, &'static str); 1], String) {
    let fleet = tokio::time::timeout(Duration::from_secs(5), async {
        let mut client = scrape.client.lock().await;
        if client
            .as_ref()
            .is_none_or(tokio_postgres::Client::is_closed)
        {
            *client = scrape.database.connect().await.ok();
        }
        db::figures(client.as_ref()?).await.ok()
    })
    .await
    .ok()
    .flatten();
    (
        [("content-type", "text/plain; version=0.0.4")],
        metrics::render(&scrape.replica, &scrape.counters, fleet.as_ref()),
    )
}
