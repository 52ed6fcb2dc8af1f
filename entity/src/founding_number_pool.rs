use sea_orm::entity::prelude::*;

/// A reclaimed founding number waiting for a tenant (migration 4).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "founding_number_pool")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub number: i32,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
