-- The label-noise candidates `embedstore audit labels` stored for one run, best first: the sample's
-- report, its given labels, and the evidence (out-of-fold probability, cleanlab quality and flag,
-- neighbour disagreement) behind each candidate's score.
-- param run_id VARCHAR: the run
SELECT json_extract(m.params, '$.rank')::INTEGER AS rank,
       s.sample_id, s.uid, s.filename, s.split, m.label,
       json_extract(m.params, '$.given')::INTEGER AS given,
       m.value AS score,
       json_extract(m.params, '$.probability')::DOUBLE AS probability,
       json_extract(m.params, '$.quality')::DOUBLE AS quality,
       json_extract(m.params, '$.flagged')::BOOLEAN AS flagged,
       json_extract(m.params, '$.disagreement')::DOUBLE AS disagreement,
       json_extract(m.params, '$.injected')::BOOLEAN AS injected,
       lw.positives AS given_positives,
       s.report
FROM metrics m
JOIN runs r ON r.run_id = m.run_id
JOIN samples s ON s.dataset_id = r.dataset_id AND s.sample_id = json_extract(m.params, '$.sample_id')::BIGINT
LEFT JOIN labels_wide lw ON lw.dataset_id = s.dataset_id AND lw.sample_id = s.sample_id
WHERE m.run_id = $run_id AND m.metric = 'label_noise.candidate'
ORDER BY rank;
