-- Where a list of samples' images are (the report's thumbnails of label-noise candidates).
-- internal
-- param ids VARCHAR: (a list of sample ids, bound as BIGINT[])
SELECT sample_id, path FROM samples WHERE sample_id IN (SELECT unnest($ids::BIGINT[]));
