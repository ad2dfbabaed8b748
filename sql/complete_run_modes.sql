-- Every complete run with its mode (which artefacts `store verify` requires of it).
-- internal
SELECT run_id, mode FROM runs WHERE status = 'complete' ORDER BY run_id;
