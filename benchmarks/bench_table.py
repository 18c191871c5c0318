"""Turns runs/bench/results.jsonl into the Markdown table kept in BENCHMARKS.md."""

import json
import sys


def main(path):
  rows = {r["name"]: r for r in map(json.loads, open(path))}
  print("| setting | distill bare step img/s | distill loop img/s | loop/bare | export img/s | export/train"
        " | compile s | peak RSS MB | torch eager img/s | torch.compile img/s | distill/eager | distill/compile |")
  print("|" + "---|" * 12)
  for setting in ("cifar10", "fashion_mnist"):
    ours = rows.get(f"{setting}/distill")
    eager = rows.get(f"{setting}/torch-eager", {}).get("images_per_second")
    compiled = rows.get(f"{setting}/torch-compile", {}).get("images_per_second")
    if not ours:
      continue
    bare = ours["bare_step_images_per_second"]
    ratio = lambda ref: f"{bare / ref:.2f}x" if ref else "-"
    print(f"| {setting} ({ours['model']}, {ours['params']:,} params, batch {ours['batch_size']}) "
          f"| {bare:,.0f} | {ours['loop_images_per_second']:,.0f} | {ours['loop_to_bare_ratio']:.2f} "
          f"| {ours['export_images_per_second']:,.0f} | {ours['export_to_train_ratio']:.1f}x "
          f"| {ours['compile_seconds']:.1f} | {ours['peak_rss_mb']:,.0f} "
          f"| {eager or '-'} | {compiled or '-'} | {ratio(eager)} | {ratio(compiled)} |")
  if "cli/help" in rows:
    print(f"\n`distill --help`: {rows['cli/help']['help_seconds']} s (best of 5)")


if __name__ == "__main__":
  main(sys.argv[1])
