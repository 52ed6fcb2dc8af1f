//! SeaORM entities for signup-worker, in the shape `sea-orm-cli generate entity` writes:
//! data only, no logic. The worker reads through them (stored rows of a batch, `founding
//! list`); it writes through raw SQL only where PostgreSQL features need it (see `store.rs`).
pub mod founding_number_pool;
pub mod founding_number_retired;
pub mod prelude;
pub mod tenants;
