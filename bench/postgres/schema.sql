-- The central-PostgreSQL alternative to Corridor, for side-by-side benchmarks:
-- one table of every city's instruments with trigram search, and bookings kept
-- apart by an exclusion constraint. Loaded from `corridor demo export`.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE EXTENSION IF NOT EXISTS btree_gist;

DROP TABLE IF EXISTS bookings, instruments, raw;
CREATE TABLE raw (doc jsonb);

CREATE TABLE instruments (
  id text PRIMARY KEY,
  city text NOT NULL,
  name_zh text NOT NULL,
  name_en text NOT NULL,
  category text NOT NULL,
  institution text NOT NULL,
  accepts_vouchers boolean NOT NULL,
  price_external_fen bigint NOT NULL,
  doc jsonb NOT NULL,
  search text NOT NULL
);

CREATE TABLE bookings (
  id bigserial PRIMARY KEY,
  instrument text NOT NULL REFERENCES instruments(id),
  during tstzrange NOT NULL,
  requester text NOT NULL,
  EXCLUDE USING gist (instrument WITH =, during WITH &&)
);

-- A booking attempt: true if booked, false if the slot is taken.
CREATE OR REPLACE FUNCTION try_book(inst text, starts timestamptz, minutes int) RETURNS boolean AS $$
BEGIN
  INSERT INTO bookings (instrument, during, requester)
  VALUES (inst, tstzrange(starts, starts + make_interval(mins => minutes)), 'bench');
  RETURN true;
EXCEPTION WHEN exclusion_violation THEN
  RETURN false;
END $$ LANGUAGE plpgsql;
