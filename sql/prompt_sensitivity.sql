-- Prompt sensitivity of zero-shot runs, as `embedstore analyze` stored it: per sweep (runs of one dataset,
-- model and protocol that differ only in prompt style), protocol and label (NULL: the macro mean), each
-- style's AUROC with the sweep's min–max range and standard deviation, F1's range, and the style's rank by
-- AUROC (1: best; ties share the best rank).
SELECT json_extract_string(lo.params, '$.sweep') AS sweep, lo.protocol, lo.split, lo.label,
       r.prompt_set AS style, lo.run_id, a.value AS auroc, lo.value AS auroc_min, hi.value AS auroc_max,
       sd.value AS auroc_sd, f.value AS f1, flo.value AS f1_min, fhi.value AS f1_max, rk.value AS rank
FROM metrics lo
JOIN runs r ON r.run_id = lo.run_id
JOIN metrics hi ON hi.run_id = lo.run_id AND hi.protocol = lo.protocol AND hi.split = lo.split
    AND hi.label IS NOT DISTINCT FROM lo.label AND hi.metric = 'prompt_sensitivity.auroc_max'
JOIN metrics a ON a.run_id = lo.run_id AND a.protocol = lo.protocol AND a.split = lo.split
    AND a.label IS NOT DISTINCT FROM lo.label AND a.metric = CASE WHEN lo.label IS NULL THEN 'macro_auroc' ELSE 'auroc' END
LEFT JOIN metrics sd ON sd.run_id = lo.run_id AND sd.protocol = lo.protocol AND sd.split = lo.split
    AND sd.label IS NOT DISTINCT FROM lo.label AND sd.metric = 'prompt_sensitivity.auroc_sd'
LEFT JOIN metrics rk ON rk.run_id = lo.run_id AND rk.protocol = lo.protocol AND rk.split = lo.split
    AND rk.label IS NOT DISTINCT FROM lo.label AND rk.metric = 'prompt_sensitivity.rank'
LEFT JOIN metrics f ON f.run_id = lo.run_id AND f.protocol = lo.protocol AND f.split = lo.split
    AND f.label IS NOT DISTINCT FROM lo.label AND f.metric = CASE WHEN lo.label IS NULL THEN 'macro_f1' ELSE 'f1' END
LEFT JOIN metrics flo ON flo.run_id = lo.run_id AND flo.protocol = lo.protocol AND flo.split = lo.split
    AND flo.label IS NOT DISTINCT FROM lo.label AND flo.metric = 'prompt_sensitivity.f1_min'
LEFT JOIN metrics fhi ON fhi.run_id = lo.run_id AND fhi.protocol = lo.protocol AND fhi.split = lo.split
    AND fhi.label IS NOT DISTINCT FROM lo.label AND fhi.metric = 'prompt_sensitivity.f1_max'
WHERE lo.metric = 'prompt_sensitivity.auroc_min'
ORDER BY sweep, lo.protocol, lo.split, lo.label NULLS FIRST, rank, style;
