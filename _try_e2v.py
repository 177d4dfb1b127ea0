import sys; sys.path.insert(0, "/tmp/e2vshim"); import classifier_stub
import time, numpy as np
t=time.time()
from build.tiny.emotion2vec import build_tiny_emotion2vec
p = build_tiny_emotion2vec("/tmp/e2v_tiny0", seed=0)
print("build", time.time()-t)
t=time.time()
from funasr import AutoModel
print("import funasr", time.time()-t)
t=time.time()
m = AutoModel(model=str(p), disable_update=True, device="cpu", hub="hf", disable_pbar=True, log_level="WARNING", ncpu=2)
print("load", time.time()-t)
from build.audio import decode_spans
clips = decode_spans(["/work/shared/data/real_emotion_speech/03-01-01-01-01-01-01.wav"]*2, [0.5, 0.0], [2.5, 3.0])
t=time.time()
res = m.generate(clips, batch_size=2, fs=16000, granularity="utterance", extract_embedding=False)
print("gen", time.time()-t)
for r in res: print(r)
