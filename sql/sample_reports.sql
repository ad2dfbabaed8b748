-- Every sample's report (for chart tooltips).
-- internal
SELECT sample_id, report FROM samples;
