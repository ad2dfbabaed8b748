-- Remove one run's figures for one protocol and split before they are written again (Grad-CAM,
-- localisation and grounding figures are written by `gradcam validate`, domain-shift figures by
-- `embedstore drift`: they are kept).
-- internal
-- param run_id VARCHAR: the run
-- param protocol VARCHAR: the protocol analysed under
-- param split VARCHAR: the split analysed
DELETE FROM metrics WHERE run_id = $run_id AND protocol = $protocol AND split = $split
    AND metric NOT LIKE 'gradcam.%' AND metric NOT LIKE 'localisation.%' AND metric NOT LIKE 'grounding.%'
    AND metric NOT LIKE 'drift.%';
