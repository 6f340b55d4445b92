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

-- Vouchers, as one central database would keep them: the balance checked and
-- held in the same transaction as the booking.
CREATE TABLE vouchers (
  id text PRIMARY KEY,
  face_fen bigint NOT NULL,
  held_fen bigint NOT NULL DEFAULT 0,
  share_percent int NOT NULL,
  CHECK (held_fen <= face_fen)
);
INSERT INTO vouchers VALUES ('wuhu/v-1', 900000000, 0, 50);

-- A voucher-paid booking attempt: the booking and the hold on the voucher
-- commit together or not at all.
CREATE OR REPLACE FUNCTION try_book_with_voucher(inst text, starts timestamptz, minutes int, voucher text)
RETURNS boolean AS $$
BEGIN
  INSERT INTO bookings (instrument, during, requester)
  VALUES (inst, tstzrange(starts, starts + make_interval(mins => minutes)), 'bench');
  UPDATE vouchers SET held_fen = held_fen + 50000 * share_percent / 100 WHERE id = voucher;
  RETURN true;
EXCEPTION WHEN exclusion_violation OR check_violation THEN
  RETURN false;
END $$ LANGUAGE plpgsql;
