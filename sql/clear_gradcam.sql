-- Remove one run's Grad-CAM maps and figures for one method and split before they are written again.
-- internal
-- param run_id VARCHAR: the run
-- param method VARCHAR: the CAM method
-- param split VARCHAR: the split validated
DELETE FROM gradcam WHERE run_id = $run_id AND method = $method
    AND sample_id IN (SELECT sample_id FROM samples WHERE split = $split);
DELETE FROM metrics WHERE run_id = $run_id AND split = $split
    AND (metric LIKE 'gradcam.%' OR metric LIKE 'localisation.%' OR metric LIKE 'grounding.%')
    AND json_extract_string(params, '$.method') = $method;
