-- pgbench: the same query mix as `corridor bench search`, by trigram match.
\set q random(0, 7)
SELECT id, similarity(search, q) AS score
FROM instruments,
     (SELECT (ARRAY['电子显微镜','核磁共振波谱仪','比表面','透射电镜','tem','nmr','microscope','x-ray diffractometer'])[:q + 1] AS q) p
WHERE search ILIKE '%' || q || '%'
ORDER BY score DESC, id
LIMIT 20;
