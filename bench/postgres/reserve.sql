-- pgbench: one 30-minute booking per call on its own slot across the
-- bookable instruments (uncontended), durable at commit (synchronous_commit on).
\set n random(1, 10000000)
SELECT try_book(i.id, timestamptz '2027-01-04 08:00+08' + ((:n / 154) % 28) * interval '30 minutes' + (:n / 4312) * interval '1 day', 30)
FROM (SELECT id FROM instruments WHERE city = 'hefei' ORDER BY id OFFSET (:n % 154) LIMIT 1) i;
