//! Where publishes go: this node's hub, or every node through the broker.

use ssehub::{Event, Hub, PublishError};

use crate::config::Config;

/// Where publishes go: this hub, or every node through the broker.
#[derive(Debug, Clone)]
pub(crate) enum Publisher {
    /// This node only.
    Local(Hub),
    /// Every node, through the backplane.
    #[cfg(any(feature = "redis", feature = "nats"))]
    Shared(ssehub::backplane::Backplane),
}

/// Why a publish was refused: a client's mistake, or the server's state.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The request was wrong.
    Invalid(String),
    /// The hub is shutting down or the broker is away.
    Unavailable(String),
}

impl Publisher {
    /// Publishes; returns the id and, on a single node, the receivers.
    pub(crate) async fn publish(
        &self,
        topic: &str,
        event: Event,
    ) -> Result<(Option<String>, Option<usize>), Refused> {
        match self {
            Publisher::Local(hub) => match hub.publish(topic, event) {
                Ok(published) => {
                    Ok((published.id().map(str::to_string), Some(published.receivers())))
                }
                Err(PublishError::Closed(_)) => {
                    Err(Refused::Unavailable("the hub is shutting down".into()))
                }
                Err(e) => Err(Refused::Invalid(e.to_string())),
            },
            #[cfg(any(feature = "redis", feature = "nats"))]
            Publisher::Shared(backplane) => {
                use ssehub::backplane::BackplaneError;
                match backplane.publish(topic, event).await {
                    // Receivers are counted on each node as the event arrives, not here.
                    Ok(published) => Ok((published.id().map(str::to_string), None)),
                    Err(e @ (BackplaneError::Topic(_) | BackplaneError::Event(_))) => {
                        Err(Refused::Invalid(e.to_string()))
                    }
                    Err(e) => Err(Refused::Unavailable(e.to_string())),
                }
            }
        }
    }
}

/// A batch that stopped midway: each line's id (published) or why not, and why it stopped.
#[derive(Debug)]
pub(crate) struct Stopped {
    /// For each line, in order: its id once published (a hub without history gives none), or
    /// why it was not.
    pub(crate) lines: Vec<Result<Option<String>, String>>,
    /// Why the batch stopped.
    pub(crate) why: Refused,
}

impl Publisher {
    /// Publishes `events` in order, each to its topic; returns their ids. The caller checked
    /// them, so only the hub shutting down or the broker failing stops the batch: then what
    /// each line became. Through a broker the batch goes in as few round trips as its size
    /// allows, and nothing after a failed event is sent.
    pub(crate) async fn publish_batch(
        &self,
        events: Vec<(String, Event)>,
    ) -> Result<Vec<Option<String>>, Stopped> {
        match self {
            Publisher::Local(_) => self.publish_each(events).await,
            #[cfg(any(feature = "redis", feature = "nats"))]
            Publisher::Shared(backplane) => {
                let answers = backplane.publish_all(events).await;
                let why = answers.iter().find_map(|answer| answer.as_ref().err()).map(|error| {
                    use ssehub::backplane::BackplaneError;
                    match error {
                        BackplaneError::Topic(_) | BackplaneError::Event(_) => {
                            Refused::Invalid(error.to_string())
                        }
                        _ => Refused::Unavailable(error.to_string()),
                    }
                });
                let lines = answers
                    .into_iter()
                    .map(|answer| answer.map(|published| published.id().map(str::to_string)));
                match why {
                    None => Ok(lines.map(|line| line.unwrap_or_default()).collect()),
                    Some(why) => Err(Stopped {
                        lines: lines.map(|line| line.map_err(|e| e.to_string())).collect(),
                        why,
                    }),
                }
            }
        }
    }

    /// Publishes `events` one after the other, stopping at the first refusal.
    async fn publish_each(
        &self,
        events: Vec<(String, Event)>,
    ) -> Result<Vec<Option<String>>, Stopped> {
        let total = events.len();
        let mut ids = Vec::with_capacity(total);
        for (topic, event) in events {
            match self.publish(&topic, event).await {
                Ok((id, _)) => ids.push(id),
                Err(why) => {
                    let mut lines: Vec<_> = ids.into_iter().map(Ok).collect();
                    let reason = match &why {
                        Refused::Invalid(reason) | Refused::Unavailable(reason) => reason.clone(),
                    };
                    lines.push(Err(reason));
                    lines.resize_with(total, || {
                        Err("not published: an earlier event failed".into())
                    });
                    return Err(Stopped { lines, why });
                }
            }
        }
        Ok(ids)
    }
}

/// A runtime of its own, on its own thread, for the publish API and the other routes beside
/// `/events`: on the streams' runtime a publish would wait in the run queue behind the writes
/// to every stream (with 10,000 subscribers, a POST's p99 went from milliseconds to a second).
/// Its thread runs at nice `nice`, so it also does not wait for a core behind the stream
/// workers (see [`crate::priority`]).
pub(crate) fn runtime(nice: i32) -> std::io::Result<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("ssehub-publish".into())
        // Runs for the life of the process, which ends without waiting for it.
        .spawn(move || {
            if let Err(error) = crate::priority::set_current_thread_nice(nice) {
                eprintln!(
                    "warning: the publish thread keeps its priority (--publish-nice {nice}: \
                     {error}); under heavy fan-out a publish may wait for a core \
                     (CAP_SYS_NICE allows it, or --fanout-nice lowers the stream workers)"
                );
            }
            runtime.block_on(std::future::pending::<()>())
        })?;
    Ok(handle)
}

/// Joins the broker given on the command line, if any.
pub(crate) async fn join(
    hub: &Hub,
    config: &Config,
) -> Result<Publisher, Box<dyn std::error::Error>> {
    let Some(broker) = &config.broker else {
        return Ok(Publisher::Local(hub.clone()));
    };
    if config.history == 0 {
        return Err("a node needs replay history to mirror the broker's: --history above 0".into());
    }
    match broker {
        #[cfg(feature = "redis")]
        crate::config::Broker::Redis(url) => {
            let redis = ssehub::backplane::Redis::new(url)
                .with_max_events(config.history)
                .with_max_in_flight(config.broker_max_in_flight as usize);
            let node = ssehub::backplane::Backplane::connect(hub, redis).await?;
            println!("backplane: joined Redis");
            Ok(Publisher::Shared(node))
        }
        #[cfg(feature = "nats")]
        crate::config::Broker::Nats(url) => {
            let nats = ssehub::backplane::Nats::new(url)
                .with_max_in_flight(config.broker_max_in_flight as usize);
            let node = ssehub::backplane::Backplane::connect(hub, nats).await?;
            println!("backplane: joined NATS");
            Ok(Publisher::Shared(node))
        }
        #[allow(unreachable_patterns)]
        // The URL is not echoed: it may hold a password.
        _ => Err(
            "--redis and --nats need ssehub-server built with its redis or nats feature (on by default; the hub example turns them off)"
                .into(),
        ),
    }
}
