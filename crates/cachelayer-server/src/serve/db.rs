//! The catalogue's database: SQLite (the default, a file) or PostgreSQL, chosen by URL, with
//! embedded migrations per backend and the sample data.
//!
//! Both backends run the same SQL text through sqlx's runtime-checked queries (its
//! compile-time macros can check only one database per crate); `on_pool!` expands each
//! query once per backend. Every statement is counted in `cachelayer_db_queries_total`.
//! This module must never know about the cache: invalidation is the catalogue's job.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::types::Json;

use super::product::{Product, ProductChanges, samples};
use crate::error::{ApiError, Error};

/// Counter of database statements, labelled by `query`.
pub const DB_QUERIES: &str = "cachelayer_db_queries_total";

/// How long a request waits for a free database connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long SQLite waits on another connection's write lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const COLUMNS: &str =
    "id, name, description, price_cents, category, tags, stock, created_at, updated_at";

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs one expression against whichever pool this is; each arm type-checks on its own.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match &$db.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// A page of products, with the number of products matching the filter.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    pub(crate) items: Vec<Product>,
    pub(crate) total: i64,
}

/// The catalogue database, cheap to clone (the pools are shared).
#[derive(Debug, Clone)]
pub(crate) struct Database {
    pool: Pool,
}

#[derive(sqlx::FromRow)]
struct ProductRow {
    id: i64,
    name: String,
    description: String,
    price_cents: i64,
    category: String,
    tags: Json<Vec<String>>,
    stock: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<ProductRow> for Product {
    fn from(row: ProductRow) -> Self {
        Self {
            id: row.id,
            name: row.name,
            description: row.description,
            // Cents are exact; a price is at most 1,000,000 units, well within f64's
            // exact integers, and `/ 100.0` gives the shortest decimal back.
            price: row.price_cents as f64 / 100.0,
            category: row.category,
            tags: row.tags.0,
            stock: row.stock,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

fn count(query: &'static str) {
    metrics::counter!(DB_QUERIES, "query" => query).increment(1);
}

/// Now, at the precision both databases keep (PostgreSQL stores microseconds), so what a
/// write returns equals what a later read returns.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Binds the writable fields in column order (name, description, price, category, tags,
/// stock), then the time of the write: the parameters every write statement ends with.
macro_rules! bind_changes {
    ($query:expr, $changes:expr) => {
        $query
            .bind($changes.name.as_deref())
            .bind($changes.description.as_deref())
            .bind($changes.price_cents)
            .bind($changes.category.as_deref())
            .bind($changes.tags.clone().map(Json))
            .bind($changes.stock)
            .bind(now())
    };
}

/// The update of the product `$1` with the fields [`bind_changes`] binds (`$2` to `$8`),
/// leaving those it does not set; a statement may add conditions and `RETURNING`.
const UPDATE_PRODUCT: &str = "UPDATE products SET name = COALESCE($2, name), \
    description = COALESCE($3, description), \
    price_cents = COALESCE($4, price_cents), category = COALESCE($5, category), \
    tags = COALESCE($6, tags), stock = COALESCE($7, stock), updated_at = $8 \
    WHERE id = $1";

/// The condition "the row is still exactly `seen`", on every column a read shows, its
/// parameters numbered from `first`: a conditional write changes the row only if nothing
/// changed it since it was read (its `ETag` is then still the one the client's
/// precondition was judged against).
fn unchanged_since_read(first: usize) -> String {
    let columns = [
        "name",
        "description",
        "price_cents",
        "category",
        "tags",
        "stock",
        "created_at",
        "updated_at",
    ];
    columns
        .iter()
        .enumerate()
        .map(|(i, column)| format!("{column} = ${}", first + i))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Binds the columns of a product as it was read, in [`unchanged_since_read`]'s order.
macro_rules! bind_seen {
    ($query:expr, $seen:expr) => {
        $query
            .bind(&$seen.name)
            .bind(&$seen.description)
            .bind(price_cents($seen.price))
            .bind(&$seen.category)
            .bind(Json(&$seen.tags))
            .bind($seen.stock)
            .bind($seen.created_at)
            .bind($seen.updated_at)
    };
}

/// A price as the database keeps it, in cents (exact: prices are read from cents).
fn price_cents(price: f64) -> i64 {
    (price * 100.0).round() as i64
}

/// The insert statement, run on any executor (a pool, or a transaction while seeding); a
/// macro because each backend's executor is a different type.
macro_rules! insert_row {
    ($executor:expr, $changes:expr) => {{
        count("insert");
        let changes: &ProductChanges = $changes;
        let sql = format!(
            "INSERT INTO products (name, description, price_cents, category, tags, stock, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING {COLUMNS}"
        );
        let query = sqlx::query_as(sqlx::AssertSqlSafe(sql));
        let row: ProductRow = bind_changes!(query, changes).fetch_one($executor).await?;
        row
    }};
}

impl Database {
    /// Connect to `url` (`sqlite://path`, `sqlite::memory:` or `postgres://...`), with up
    /// to `pool_size` connections, and run the migrations.
    pub(crate) async fn open(url: &str, pool_size: u32) -> Result<Self, Error> {
        let pool = if url.starts_with("sqlite:") {
            Pool::Sqlite(open_sqlite(url, pool_size).await?)
        } else {
            let pool = PgPoolOptions::new()
                .max_connections(pool_size)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect(url)
                .await
                .map_err(|err| Error::database("connecting to PostgreSQL", err))?;
            Pool::Postgres(pool)
        };
        let db = Self { pool };
        db.migrate().await?;
        Ok(db)
    }

    /// `sqlite` or `postgres`.
    pub(crate) fn kind(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    async fn migrate(&self) -> Result<(), Error> {
        let result = match &self.pool {
            Pool::Sqlite(pool) => sqlx::migrate!("migrations/sqlite").run(pool).await,
            Pool::Postgres(pool) => sqlx::migrate!("migrations/postgres").run(pool).await,
        };
        result.map_err(|err| Error::database("running the schema migrations", err))
    }

    /// Create `count` sample products if this database never had them and holds no
    /// products; returns how many were created. Safe when several instances start at once:
    /// one of them claims the seeding in the same transaction that inserts.
    pub(crate) async fn seed(&self, count: u32) -> Result<u64, Error> {
        if count == 0 {
            return Ok(0);
        }
        self.seed_once(count)
            .await
            .map_err(|err| Error::database("creating the sample data", err))
    }

    async fn seed_once(&self, count: u32) -> Result<u64, sqlx::Error> {
        let created = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            self::count("seed");
            let claimed = sqlx::query(
                "INSERT INTO catalogue_meta (key, value) VALUES ('seeded', $1) \
                 ON CONFLICT (key) DO NOTHING",
            )
            .bind(now().to_rfc3339())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let existing: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM products")
                .fetch_one(&mut *tx)
                .await?;
            if claimed == 0 || existing > 0 {
                tx.commit().await?;
                0
            } else {
                for sample in samples(count) {
                    insert_row!(&mut *tx, &sample);
                }
                tx.commit().await?;
                u64::from(count)
            }
        });
        Ok(created)
    }

    /// One product.
    pub(crate) async fn product(&self, id: i64) -> Result<Option<Product>, sqlx::Error> {
        count("get");
        let sql = format!("SELECT {COLUMNS} FROM products WHERE id = $1");
        let row: Option<ProductRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?
        });
        Ok(row.map(Product::from))
    }

    /// A page of products in id order, optionally of one category.
    pub(crate) async fn page(
        &self,
        category: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<Page, sqlx::Error> {
        count("list");
        count("count");
        let sql = format!(
            "SELECT {COLUMNS} FROM products WHERE ($1 IS NULL OR category = $1) \
             ORDER BY id LIMIT $2 OFFSET $3"
        );
        let count_sql = "SELECT COUNT(*) FROM products WHERE ($1 IS NULL OR category = $1)";
        let (rows, total): (Vec<ProductRow>, i64) = on_pool!(self, pool => {
            let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(category)
                .bind(limit)
                .bind(offset)
                .fetch_all(pool)
                .await?;
            let total = sqlx::query_scalar(count_sql).bind(category).fetch_one(pool).await?;
            (rows, total)
        });
        Ok(Page {
            items: rows.into_iter().map(Product::from).collect(),
            total,
        })
    }

    /// Insert a product (every field of `changes` set).
    pub(crate) async fn insert(&self, changes: &ProductChanges) -> Result<Product, sqlx::Error> {
        let row = on_pool!(self, pool => insert_row!(pool, changes));
        Ok(row.into())
    }

    /// Set the fields `changes` holds, leaving the others; `None` when there is no such
    /// product.
    pub(crate) async fn update(
        &self,
        id: i64,
        changes: &ProductChanges,
    ) -> Result<Option<Product>, sqlx::Error> {
        count("update");
        let sql = format!("{UPDATE_PRODUCT} RETURNING {COLUMNS}");
        let row: Option<ProductRow> = on_pool!(self, pool => {
            let query = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id);
            bind_changes!(query, changes).fetch_optional(pool).await?
        });
        Ok(row.map(Product::from))
    }

    /// Delete a product; false when there was none.
    pub(crate) async fn delete(&self, id: i64) -> Result<bool, sqlx::Error> {
        count("delete");
        let deleted = on_pool!(self, pool => {
            sqlx::query("DELETE FROM products WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(deleted > 0)
    }

    /// [`update`](Self::update), only if the row is still exactly `seen` (else `None`).
    pub(crate) async fn update_unchanged(
        &self,
        seen: &Product,
        changes: &ProductChanges,
    ) -> Result<Option<Product>, sqlx::Error> {
        count("update");
        let sql = format!(
            "{UPDATE_PRODUCT} AND {} RETURNING {COLUMNS}",
            unchanged_since_read(9)
        );
        let row: Option<ProductRow> = on_pool!(self, pool => {
            let query = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(seen.id);
            bind_seen!(bind_changes!(query, changes), seen).fetch_optional(pool).await?
        });
        Ok(row.map(Product::from))
    }

    /// [`delete`](Self::delete), only if the row is still exactly `seen` (else false).
    pub(crate) async fn delete_unchanged(&self, seen: &Product) -> Result<bool, sqlx::Error> {
        count("delete");
        let sql = format!(
            "DELETE FROM products WHERE id = $1 AND {}",
            unchanged_since_read(2)
        );
        let deleted = on_pool!(self, pool => {
            let query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(seen.id);
            bind_seen!(query, seen).execute(pool).await?.rows_affected()
        });
        Ok(deleted > 0)
    }

    /// A trivial query: whether the database answers.
    pub(crate) async fn ping(&self) -> Result<(), sqlx::Error> {
        count("ping");
        on_pool!(self, pool => {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// Close every connection, waiting for checked-out ones to come back.
    pub(crate) async fn close(&self) {
        on_pool!(self, pool => pool.close().await);
    }
}

async fn open_sqlite(url: &str, pool_size: u32) -> Result<SqlitePool, Error> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|err| Error::config("--database-url (DATABASE_URL)", format!("{err}")))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true);
    let mut pool = SqlitePoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(ACQUIRE_TIMEOUT);
    if url.contains(":memory:") {
        // An in-memory database lives as long as a connection to it: keep exactly one open
        // for the life of the pool (idle and lifetime limits would close it, and the data
        // with it).
        pool = pool
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None);
    }
    pool.connect_with(options)
        .await
        .map_err(|err| Error::database("opening the SQLite database", err))
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        tracing::error!(error = %err, "database query failed");
        Self::unavailable("the database")
    }
}
