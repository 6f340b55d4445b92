-- From the exported JSON lines in `raw` to the tables the benchmark reads.
INSERT INTO instruments
SELECT doc->>'city' || '/' || (doc->>'local_id'),
       doc->>'city',
       CASE doc->>'city'
         WHEN 'shanghai' THEN 'Shanghai'
         WHEN 'suzhou' THEN 'Jiangsu'
         WHEN 'hefei' THEN 'Anhui' WHEN 'wuhu' THEN 'Anhui' WHEN 'xuancheng' THEN 'Anhui'
         ELSE 'Zhejiang'
       END,
       doc->>'name_zh', doc->>'name_en', doc->>'category', doc->>'institution_name',
       coalesce((doc->>'accepts_vouchers')::boolean, true),
       coalesce(doc->>'status', 'available') = 'available' AND NOT coalesce((doc->>'training_required')::boolean, false),
       coalesce((doc->>'price_external_fen')::bigint, 0),
       concat_ws(' ', doc->>'name_zh', doc->>'name_en'),
       concat_ws(' ', doc->>'name_zh', doc->>'name_en', doc->>'description', doc->>'manufacturer', doc->>'model',
                 (SELECT string_agg(t, ' ') FROM jsonb_array_elements_text(coalesce(doc->'techniques', '[]')) t))
FROM raw;
DROP TABLE raw;

-- The same instruments `corridor bench reserve` books: Hefei's bookable ones.
INSERT INTO bookable
SELECT row_number() OVER (ORDER BY id) - 1, id FROM instruments WHERE city = 'hefei' AND bookable;

-- Trigram indexes on exactly the searched columns. The cluster is C.UTF-8, so
-- trigrams keep Chinese characters (under the C locale they are dropped).
CREATE INDEX instruments_names_trgm ON instruments USING gin (names gin_trgm_ops);
CREATE INDEX instruments_alltext_trgm ON instruments USING gin (alltext gin_trgm_ops);
-- The ranking's GiST index comes later (rank.sql): with it present, the
-- planner also uses it for the unranked searches, which it slows.
VACUUM ANALYZE instruments;
VACUUM ANALYZE bookable;
