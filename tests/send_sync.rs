//! The public types can cross threads and tasks.

fn send_sync<T: Send + Sync>() {}
fn send<T: Send>() {}

#[test]
fn public_types_are_send_and_sync() {
    send_sync::<ssehub::Hub>();
    send_sync::<ssehub::HubBuilder>();
    send_sync::<ssehub::Subscription>();
    send_sync::<ssehub::Event>();
    send_sync::<ssehub::Pattern>();
    send_sync::<ssehub::Stats>();
    send_sync::<ssehub::PublishError>();
    send_sync::<ssehub::SubscribeError>();
    send_sync::<ssehub::ClientError>();
    send_sync::<ssehub::ConnectedClient>();
    send_sync::<ssehub::UpdateError>();
    send_sync::<ssehub::SubscriptionChange>();
    send::<ssehub::Batch>();
}

#[cfg(any(feature = "redis", feature = "nats"))]
#[test]
fn backplane_types_are_send_and_sync() {
    send_sync::<ssehub::backplane::Backplane>();
    send_sync::<ssehub::backplane::BackplaneError>();
    send_sync::<ssehub::backplane::BackplaneState>();
    send_sync::<ssehub::backplane::BrokerConfig>();
}
