-- Where one sample's image is (for the report's thumbnails of label-noise candidates).
-- internal
-- param sample_id BIGINT: the sample
SELECT path FROM samples WHERE sample_id = $sample_id;
