//! The vgpu-registry core. Every rule of the product lives here; the CLI, the Python extension
//! and the plugin only convert arguments in and results out, through [`Service`].
//!
//! - [`functions`]: THE function table: every plugin function and argument key, declared once.
//! - [`service`]: the entry point of every front end: settings, XAPI, routing to the pool master.
//! - [`report`]: the JSON contract: the typed results front ends render.
//! - [`error`]: the typed error with the stable error codes of the contract.
//! - [`model`]: the values (pool, priority, vm_id, VM uuid and name) and their validation.
//! - [`dma`]: the `device-model-args` codec (shell-word rules; touches only the vgpu entry).
//!
//! Inside: `request` (arguments to a validated request), `ops` (the operations, and `ops::apply`,
//! one change across SQLite and XAPI), `status` (the pure registry-versus-device comparison),
//! `store` (SQLite: schema, migrations, transactions), `config` (`vgpu.conf`).

mod config;
mod dma;
pub mod error;
pub mod functions;
#[doc(hidden)]
pub mod fuzzing;
pub mod model;
mod ops;
mod pool;
pub mod report;
mod request;
pub mod service;
mod status;
mod store;

pub use error::{Error, ErrorCode, Result};
pub use functions::{FunctionSpec, FUNCTIONS};
pub use report::Outcome;
pub use request::Call;
pub use service::{Answer, Service, Settings};
pub use store::SCHEMA_VERSION;
