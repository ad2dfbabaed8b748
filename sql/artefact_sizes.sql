-- Artefacts recorded in the store's manifest: count and bytes per kind.
SELECT kind, count(*) AS files, sum(bytes) AS bytes FROM manifest GROUP BY kind ORDER BY kind;
