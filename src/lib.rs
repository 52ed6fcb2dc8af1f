pub mod amqp;
pub mod db;
pub mod domain;
pub mod error;
pub mod http;
pub mod metrics;
pub mod store;
pub mod worker;
