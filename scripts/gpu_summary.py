"""The summary of `scripts/gpu.sh verify`: its result lines (one JSON object each) folded into one
object by stage, written to SUMMARY and printed as the last line of stdout.

Usage: gpu_summary.py RESULTS.jsonl SUMMARY.json
"""
import json
import sys


def main(results, summary):
    rows = []
    for line in open(results):
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                rows.append({"stage": "unparsed", "line": line[:200]})
    s = {"stages": {}, "parity": [], "throughput": [], "graph": [], "learning": {"knn": []},
         "inference": []}
    for r in rows:
        stage = r.get("stage")
        if "status" in r:
            s["stages"][stage] = {"status": r["status"], "seconds": r["seconds"]}
        elif stage == "environment":
            s["environment"] = {k: v for k, v in r.items() if k != "stage"}
        elif stage == "parity":
            c = r.get("compare") or {}
            s["parity"].append({
                "method": r["method"], "precision": r["precision"], "ok": c.get("ok", False),
                "worst_loss": c.get("worst_loss"), "worst_tensor": c.get("worst_tensor"),
                "error": r.get("error") or c.get("error"),
            })
        elif stage == "throughput":
            t = r["result"]
            s["throughput"].append({k: t.get(k) for k in (
                "arch", "crop", "amp", "batch_size", "two_view_images_per_sec", "ms_per_step",
                "host_ms_per_step", "peak_bytes")})
        elif stage == "graph":
            c, t = r.get("compare") or {}, r.get("result") or {}
            s["graph"].append({k: v for k, v in {
                "method": r.get("method"), "skipped": r.get("skipped"), "ok": c.get("ok"),
                "worst_loss": c.get("worst_loss"), "worst_tensor": c.get("worst_tensor"),
                "error": c.get("error"), "cuda_graph": t.get("cuda_graph"),
                "two_view_images_per_sec": t.get("two_view_images_per_sec"),
                "host_ms_per_step": t.get("host_ms_per_step")}.items() if v is not None})
        elif stage == "learning":
            if "floor" in r:
                s["learning"]["floor_knn_top1"] = r["floor"].get("top1")
            elif "epoch" in r:
                s["learning"]["knn"].append({"epoch": r["epoch"], "knn_top1": r["knn_top1"],
                                             "images_per_sec": r["images_per_sec"]})
            elif "result" in r:
                s["learning"]["epochs"] = r["epochs"]
                s["learning"]["seconds"] = r["result"].get("seconds")
                s["learning"]["knn_top1"] = r["result"].get("knn_top1")
        elif stage == "inference":
            row = {k: v for k, v in r.items() if k not in ("stage", "result")}
            res = r.get("result") or {}
            row.update({k: res[k] for k in ("top1", "top5", "n", "images_per_sec", "error") if k in res})
            s["inference"].append(row)
    s["parity_ok"] = bool(s["parity"]) and all(p["ok"] for p in s["parity"])
    with open(summary, "w") as f:
        json.dump(s, f, indent=1)
    print(json.dumps(s, separators=(",", ":")))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
