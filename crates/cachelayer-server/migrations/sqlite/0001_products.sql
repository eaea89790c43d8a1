-- The catalogue (SQLite). Prices are kept exactly, in cents; tags as a JSON array.
CREATE TABLE products (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    category TEXT NOT NULL,
    tags TEXT NOT NULL,
    stock INTEGER NOT NULL CHECK (stock >= 0),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE INDEX products_by_category ON products (category, id);

-- One-time facts about this database, such as whether the sample data was created.
CREATE TABLE catalogue_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
