"""Written with mmfuse at commit 1dc8a8b (bundle format 1, before input names were escaped)."""
import numpy as np, pandas as pd, sys
from pathlib import Path
from mmfuse.api import MultimodalPredictor
out = Path(sys.argv[1])
rng = np.random.default_rng(0)
words = ["good", "bad", "fine", "poor", "nice", "awful"]
n = 60
y = rng.integers(0, 2, n)
df = pd.DataFrame({
    "Discount %": [" ".join(rng.choice(words[:3] if v else words[3:], 4)) for v in y],
    "get": [" ".join(rng.choice(words, 3)) for _ in range(n)],
    "price": rng.normal(size=n).round(3), "label": np.where(y == 1, "yes", "no")})
df.to_csv(out / "table.csv", index=False)
m = MultimodalPredictor(target="label", fusion="cross_attention", epochs=1, dim=8, head_hidden=8, batch_size=16,
                        progress=False, log=None, contribution=False, aux_weight=0.5,
                        preprocessing={"text": {"min_freq": 1, "max_length": 8}}, groups={"num %": ["price"]},
                        model={"encoders": {"text": {"embed_dim": 8, "hidden": 8}}})
m.fit(df)
m.save(out / "bundle")
p = m.predict_proba(df)
pd.DataFrame({"proba_yes": p[:, 1], "prediction": m.predict(df)}).to_csv(out / "expected.csv", index=False)
print(sorted(m.predictor_.model.names))
