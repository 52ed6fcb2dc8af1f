pub use super::founding_number_pool::Entity as FoundingNumberPool;
pub use super::founding_number_retired::Entity as FoundingNumberRetired;
pub use super::tenants::Entity as Tenants;
