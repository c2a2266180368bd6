// Answers each line of stdin (a JSON string) with what the original server computed for an air
// date, `new Date(text.split(' - ')[0]).getTime()`, as one JSON line (null for NaN). Run with
// TZ=UTC; tests/test_fuzz_dates.py compares dramaverse.domain.dates with it.
import { createInterface } from "node:readline";

for await (const line of createInterface({ input: process.stdin })) {
  const time = new Date(JSON.parse(line).split(" - ")[0]).getTime();
  process.stdout.write(JSON.stringify(Number.isNaN(time) ? null : time) + "\n");
}
