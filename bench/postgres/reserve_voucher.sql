-- pgbench: like reserve.sql, each booking also holding half of a 500-yuan fee
-- on one shared voucher, in the same transaction (the central design).
\set n random(1, 10000000)
SELECT try_book_with_voucher(i.id, timestamptz '2027-03-01 08:00+08' + ((:n / 154) % 28) * interval '30 minutes' + (:n / 4312) * interval '1 day', 30, 'wuhu/v-1')
FROM (SELECT id FROM instruments WHERE city = 'hefei' ORDER BY id OFFSET (:n % 154) LIMIT 1) i;
