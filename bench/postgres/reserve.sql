-- pgbench -M prepared, one booking per call: a 30-minute slot inside opening
-- hours (08:00-22:00, as `corridor bench reserve` books), each call on its own
-- slot (uncontended), one statement, durable at commit (synchronous_commit on).
-- Client c's i-th call takes slot number i * clients + c: the instrument is
-- that number modulo the bookable count (found by primary key), the slot the
-- rest. Needs -D clients=N -D count=K -D i=0 (K: rows in `bookable`).
\set i :i + 1
\set n :i * :clients + :client_id
\set slot :n / :count
\set inst :n % :count
INSERT INTO bookings (instrument, during, requester, idempotency_key)
SELECT b.id,
       tstzrange(t, t + interval '30 minutes'),
       'bench',
       'pg-' || :client_id::int || '-' || :i::int
FROM bookable b,
     LATERAL (SELECT timestamptz '2027-01-04 08:00+08'
                     + (:slot::int / 28) * interval '1 day'
                     + (:slot::int % 28) * interval '30 minutes' AS t) s
WHERE b.n = :inst::int
ON CONFLICT DO NOTHING;
