"""Turns runs/bench/results.jsonl into the Markdown table kept in BENCHMARKS.md."""

import json
import sys


def _ratio(value, ref):
  """Formats `value / ref` as a speed-up such as "1.23x", or "-" when there is no reference."""
  return f"{value / ref:.2f}x" if ref else "-"


def main(path):
  rows = [json.loads(line) for line in open(path)]
  by_name = {r["name"]: r for r in rows}
  print("| setting | CPU | dtype | steps/dispatch | bare step img/s | loop steps | loop img/s"
        " | loop/bare | export img/s | export/bare"
        " | compile s | peak RSS MB | vs torch eager | vs torch.compile |")
  print("|" + "---|" * 14)
  for row in rows:
    setting, _, variant = row["name"].partition("/")
    if not variant.startswith("distill"):
      continue
    eager = by_name.get(f"{setting}/torch-eager", {}).get("images_per_second")
    compiled = by_name.get(f"{setting}/torch-compile", {}).get("images_per_second")
    bare = row["bare_step_images_per_second"]
    print(f"| {setting} ({row['model']}, {row['params']:,} params, batch {row['batch_size']}) "
          f"| {row.get('cpu', '-')} | {row['compute_dtype']} | {row['steps_per_dispatch']} "
          f"| {bare:,.0f} "
          f"| {row['loop_steps']:,} "
          f"| {row['loop_images_per_second']:,.0f} "
          f"| {row['loop_to_bare_ratio']:.2f} | {row['export_images_per_second']:,.0f} "
          f"| {row['export_to_train_ratio']:.1f}x | {row['compile_seconds']:.1f} "
          f"| {row['peak_rss_mb']:,.0f} | {_ratio(bare, eager)} | {_ratio(bare, compiled)} |")
  print()
  print("| reference | CPU | img/s | warm-up s | peak RSS MB |")
  print("|---|---|---|---|---|")
  for row in rows:
    if "framework" in row:
      print(f"| {row['name']} ({row['framework']} {row['torch_version']}, "
            f"{row['threads']} threads, {row['params']:,} params) "
            f"| {row.get('cpu', '-')} | {row['images_per_second']:,.0f} "
            f"| {row['warmup_seconds']:.1f} | {row['peak_rss_mb']:,.0f} |")
  if "cli/help" in by_name:
    print(f"\n`distill --help`: {by_name['cli/help']['help_seconds']} s (best of 5)")


if __name__ == "__main__":
  main(sys.argv[1])
