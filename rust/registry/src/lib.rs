//! The vgpu-registry core. Every rule of the product lives here; the CLI, the Python extension
//! and the plugin only convert arguments in and results out.
//!
//! - [`model`]: the values (pool, priority, vm_id, VM uuid and name) and their validation.
//! - [`error`]: the typed error with the stable error codes of the contract.
//! - [`dma`]: the `device-model-args` codec (shell-word rules; touches only the vgpu entry).
//! - [`store`]: the SQLite registry: schema, migrations of older databases, transactions.
//! - [`config`]: `vgpu.conf` (TOML).
//! - [`ops`]: the operations (scan, register, set-vm-id, …) over the store and XAPI.
//! - [`api`]: the plugin API dispatcher: function name + string arguments → JSON or error.
//! - [`service`]: the entry point of every front end: settings, XAPI connection, routing to
//!   the pool master.

pub mod api;
pub mod config;
pub mod dma;
pub mod error;
pub mod model;
pub mod ops;
pub mod service;
pub mod store;

pub use error::{Error, ErrorCode, Result};
