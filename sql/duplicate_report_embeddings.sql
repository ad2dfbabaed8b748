-- Runs with two report embeddings of one sample (a store written by hand, or damaged): `store verify`
-- names them, since retrieval would count such a sample twice.
-- internal
SELECT run_id, count(*) - count(DISTINCT sample_id) AS duplicates
FROM report_embeddings
GROUP BY run_id
HAVING count(*) > count(DISTINCT sample_id)
ORDER BY run_id;
