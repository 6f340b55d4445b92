-- The central-PostgreSQL alternative to Corridor, set up as a PostgreSQL expert
-- would for these two workloads: one table of every city's instruments with
-- trigram search, and bookings kept apart by an exclusion constraint, each
-- booking one prepared statement. Loaded from `corridor demo export`; every
-- choice is explained in BENCHMARKS.md ("Side by side: a central PostgreSQL").
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE raw (doc jsonb);

CREATE TABLE instruments (
  id text PRIMARY KEY,
  city text NOT NULL,
  province text NOT NULL,
  name_zh text NOT NULL,
  name_en text NOT NULL,
  category text NOT NULL,
  institution text NOT NULL,
  accepts_vouchers boolean NOT NULL,
  bookable boolean NOT NULL,
  price_external_fen bigint NOT NULL,
  -- What the name search reads, and what the wider search reads (names,
  -- description, maker, model, techniques): one indexed column each, so that
  -- a query is one trigram lookup, not an OR over several.
  names text NOT NULL,
  alltext text NOT NULL
);

-- The instruments `corridor bench reserve` books, numbered so that a client
-- finds its instrument by primary key.
CREATE TABLE bookable (n int PRIMARY KEY, id text NOT NULL REFERENCES instruments (id));

CREATE TABLE bookings (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  instrument text NOT NULL REFERENCES instruments (id),
  during tstzrange NOT NULL,
  requester text NOT NULL,
  -- A retried call must not book twice: the client's key is unique, and the
  -- booking's INSERT … ON CONFLICT DO NOTHING covers it and the overlap alike.
  idempotency_key text NOT NULL UNIQUE,
  EXCLUDE USING gist (instrument WITH =, during WITH &&)
);

-- Vouchers, as one central database would keep them: the hold on the balance
-- is taken in the same statement as the booking.
CREATE TABLE vouchers (
  id text PRIMARY KEY,
  face_fen bigint NOT NULL,
  held_fen bigint NOT NULL DEFAULT 0,
  share_percent int NOT NULL,
  CHECK (held_fen <= face_fen)
);
INSERT INTO vouchers VALUES ('wuhu/v-1', 900000000000, 0, 50);
