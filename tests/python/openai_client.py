"""Drive a leasehold node with the official `openai` Python client.

    python openai_client.py MODE BASE_URL MODEL

Modes (each exits 0 when the behaviour holds, and prints one JSON line):
  chat         a chat completion returns text and usage
  stream       a streamed chat completion yields content chunks
  grace        a request succeeds and the response says the license is in grace
  expired      a request is refused: HTTP 403, code license_expired
  concurrent   8 concurrent chats complete while one streaming client disconnects
  long-stream  a long stream that the lapse cuts: ends with a license_expired error
               (a fixed seed: sampled, the model sometimes ended its story in a few
               tokens, before the lapse)
  story        a greedy streamed story (60 tokens), and a non-streamed one: every
               content chunk, each finish_reason and the non-streamed text
               (the output filter test compares a filtered run against a plain one)
"""
import json
import sys
import threading
import time

import openai

mode, base, model = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
STORY = [{"role": "user", "content": "Write a short story about a lighthouse keeper and a storm."}]
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Name three colours."},
]


def out(**kv):
    print(json.dumps(kv), flush=True)


if mode == "chat":
    r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=24, temperature=0)
    text = r.choices[0].message.content
    assert text and text.strip(), r
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 24, r.usage
    out(text=text, usage=r.usage.model_dump())

elif mode == "stream":
    chunks = []
    usage = None
    for chunk in client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=24, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                chunks.append(c.delta.content)
    assert len(chunks) >= 2, chunks
    assert usage is not None and usage.completion_tokens > 0
    out(chunks=len(chunks), text="".join(chunks))

elif mode == "story":
    chunks, finish = [], None
    for chunk in client.chat.completions.create(model=model, messages=STORY, max_tokens=60, temperature=0,
                                                stream=True):
        for c in chunk.choices:
            if c.delta.content:
                chunks.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    r = client.chat.completions.create(model=model, messages=STORY, max_tokens=60, temperature=0)
    out(chunks=chunks, finish_reason=finish, whole=r.choices[0].message.content,
        whole_finish_reason=r.choices[0].finish_reason)

elif mode == "grace":
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, max_tokens=4)
    phase = raw.headers.get("x-leasehold-license-phase")
    assert phase == "grace", phase
    assert raw.headers.get("warning"), dict(raw.headers)
    r = raw.parse()
    assert r.choices[0].message.content is not None
    out(phase=phase, warning=raw.headers.get("warning"))

elif mode == "expired":
    try:
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4)
    except openai.PermissionDeniedError as e:
        assert e.status_code == 403
        assert e.code == "license_expired", e.body
        out(status=e.status_code, code=e.code)
        sys.exit(0)
    sys.exit("the request was served after the license lapsed")

elif mode == "concurrent":
    results, errors = {}, []

    def ask(i):
        try:
            r = client.chat.completions.create(
                model=model, max_tokens=24, temperature=0,
                messages=[{"role": "user", "content": f"Count from {i} to {i + 5}."}])
            results[i] = r.choices[0].message.content
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    def walk_away():
        stream = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=500, stream=True)
        for n, _ in enumerate(stream):
            if n == 2:
                stream.close()
                return

    start = time.time()
    threads = [threading.Thread(target=walk_away)] + [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors, errors
    assert len(results) == 8 and all(v and v.strip() for v in results.values()), results
    out(completed=len(results), seconds=round(time.time() - start, 2))

elif mode == "long-stream":
    chunks = 0
    try:
        for chunk in client.chat.completions.create(
                model=model, max_tokens=900, stream=True, seed=7,
                messages=[{"role": "user", "content": "Write a very long story about the sea."}]):
            chunks += 1
    except openai.APIError as e:
        body = e.body if isinstance(e.body, dict) else {}
        code = body.get("code") or (body.get("error") or {}).get("code")
        out(ended="error", code=code, chunks=chunks, message=str(e))
        sys.exit(0 if code == "license_expired" else 1)
    out(ended="complete", chunks=chunks)
    sys.exit(1)

else:
    sys.exit(f"unknown mode {mode}")
