-- pgbench -M prepared: like reserve.sql, each booking also holding half of a
-- 500-yuan fee on one shared voucher, in the same statement (the central
-- design): the hold is taken only if the booking went in, and a hold past the
-- voucher's face fails the CHECK and takes the booking back with it.
\set i :i + 1
\set n :i * :clients + :client_id
\set slot :n / :count
\set inst :n % :count
WITH booked AS (
  INSERT INTO bookings (instrument, during, requester, idempotency_key)
  SELECT b.id,
         tstzrange(t, t + interval '30 minutes'),
         'bench',
         'pgv-' || :client_id::int || '-' || :i::int
  FROM bookable b,
       LATERAL (SELECT timestamptz '2027-06-01 08:00+08'
                       + (:slot::int / 28) * interval '1 day'
                       + (:slot::int % 28) * interval '30 minutes' AS t) s
  WHERE b.n = :inst::int
  ON CONFLICT DO NOTHING
  RETURNING 1
)
UPDATE vouchers SET held_fen = held_fen + 50000 * share_percent / 100
WHERE id = 'wuhu/v-1' AND EXISTS (SELECT FROM booked);
