#![cfg_attr(docsrs, feature(doc_cfg))]
//! Request coalescing: a thousand concurrent requests for one cold key
//! cause one computation, not a thousand.
//!
//! - [`Coalescer`]: single flight in process. Callers of one key share one
//!   computation; errors and panics reach every waiter; the computation
//!   survives any one caller leaving and stops when all have left.
//! - [`Cache`]: values with a [`Freshness`]: coalesced misses,
//!   stale-while-revalidate, stale-if-error, and early refresh (XFetch)
//!   so hot keys are rarely found cold.
//! - [`RedisCache`] (feature `redis`): the same across processes. One
//!   process wins a Redis lock (`SET NX PX`, lease extended while it
//!   computes) and computes; the others wait for a pub/sub wake-up (with a
//!   polling fallback and a timeout); if the leader dies exactly one waiter
//!   takes over, and if its computation fails the waiters get its failure
//!   ([`RedisCache::share_failures`]). While Redis does not answer, a [`FailurePolicy`]
//!   decides: compute in process (the default), up to a limit, or refuse;
//!   one lookup per probe interval asks Redis again.
//! - [`http::CoalesceLayer`] (feature `http`): whole `GET`/`HEAD`
//!   responses served from a [`Cache`], the origin's `Cache-Control`
//!   deciding what is kept and for how long.
//!
//! # Metrics
//!
//! Every type logs through `tracing` (target `palisade_coalesce`). With
//! feature `otel`, `instrument(meter, name)` on a [`Coalescer`], a
//! [`Cache`] or a `RedisCache` counts, under the attribute `cache = name`:
//!
//! | name | attributes | counts |
//! |---|---|---|
//! | `palisade.coalesce.lookups` | `cache`, `served` (`fresh`, `stale`, `miss`, `stale_if_error`, `failed`) | lookups, by how they were served (`failed`: with no value, the origin failed or the flight was refused; the HTTP layer looks up again, each a lookup, when a layer below refused the leader's request for its own sake) |
//! | `palisade.coalesce.origin_calls` | `cache` | calls to the origin (computations started); a `RedisCache` counts those this process made, not the lookups it answered from Redis |
//! | `palisade.coalesce.coalesced` | `cache` | callers that joined a computation already running |
//! | `palisade.coalesce.early_refreshes` | `cache` | early refreshes (XFetch) started |
//! | `palisade.coalesce.lock_takeovers` | `cache` | Redis locks won by a waiter after the leader's lock went, whatever took it (its lease ran out, the leader gave it back, the key was invalidated) |
//! | `palisade.coalesce.redis_errors` | `cache` | Redis calls that failed or were not answered within the timeout |
//! | `palisade.coalesce.without_redis` | `cache`, `outcome` (`computed`, `refused`) | in-process flights (one for all the callers of a key at once) that Redis did not answer, answered by the [`FailurePolicy`]; a refused one may still have served a stale value |

mod cache;
#[cfg(feature = "redis")]
mod codec;
mod context;
pub mod error;
mod events;
mod flight;
mod freshness;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "redis")]
mod redis_cache;

pub use cache::{Cache, Lookup, Served};
pub use error::{FlightError, SharedError};
pub use flight::Coalescer;
pub use freshness::{Entry, Freshness, State};
/// The OpenTelemetry API this crate records to (feature `otel`): take
/// the `Meter` you hand it from this version.
#[cfg(feature = "otel")]
pub use opentelemetry;
pub use palisade_hints::{Refusal, RefusalReason};
#[cfg(feature = "redis")]
pub use redis_cache::{FailurePolicy, RedisCache, RedisSettings};

/// The README's example, compiled and run as a doctest so it stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
