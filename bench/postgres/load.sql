INSERT INTO instruments
SELECT doc->>'city' || '/' || (doc->>'local_id'), doc->>'city', doc->>'name_zh', doc->>'name_en', doc->>'category',
       doc->>'institution_name', (doc->>'accepts_vouchers')::boolean, (doc->>'price_external_fen')::bigint, doc,
       lower(concat_ws(' ', doc->>'name_zh', doc->>'name_en', doc->>'description', doc->>'manufacturer',
                       doc->>'model', doc->>'institution_name'))
FROM raw;
CREATE INDEX instruments_search_trgm ON instruments USING gin (search gin_trgm_ops);
ANALYZE instruments;
