//! SeaORM entities for signup-worker, in the shape `sea-orm-cli generate entity` writes:
//! data only, no logic.
pub mod prelude;
pub mod tenants;
