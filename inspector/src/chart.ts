/** Events per second over the last minute, drawn as bars on a canvas. */

const SECONDS = 60;

export class RateChart {
  /** counts[i] is the number of events in second `first + i` (epoch seconds). */
  private counts: number[] = new Array<number>(SECONDS).fill(0);
  private first = Math.floor(Date.now() / 1000) - SECONDS + 1;

  constructor(
    private readonly canvas: HTMLCanvasElement,
    private readonly label: HTMLElement,
  ) {}

  record(at: number = Date.now()): void {
    this.advance(at);
    const index = Math.floor(at / 1000) - this.first;
    if (index >= 0 && index < SECONDS) this.counts[index] = (this.counts[index] ?? 0) + 1;
  }

  reset(): void {
    this.counts.fill(0);
    this.draw();
  }

  /** Shift the window so that it ends at `at`'s second. */
  private advance(at: number): void {
    const last = Math.floor(at / 1000);
    const shift = last - (this.first + SECONDS - 1);
    if (shift <= 0) return;
    this.counts = shift >= SECONDS ? new Array<number>(SECONDS).fill(0) : this.counts.slice(shift);
    while (this.counts.length < SECONDS) this.counts.push(0);
    this.first += shift;
  }

  draw(at: number = Date.now()): void {
    this.advance(at);
    // The last complete second is the rate; the current one is still filling.
    const rate = this.counts[SECONDS - 2] ?? 0;
    this.label.textContent = `${rate} event${rate === 1 ? "" : "s"}/s`;
    const ratio = window.devicePixelRatio || 1;
    const width = this.canvas.clientWidth || this.canvas.width;
    const height = this.canvas.clientHeight || this.canvas.height;
    if (this.canvas.width !== Math.round(width * ratio)) {
      this.canvas.width = Math.round(width * ratio);
      this.canvas.height = Math.round(height * ratio);
    }
    const context = this.canvas.getContext("2d");
    if (context === null) return;
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, width, height);
    const peak = Math.max(1, ...this.counts);
    const slot = width / SECONDS;
    const style = getComputedStyle(this.canvas);
    context.fillStyle = style.getPropertyValue("--grid").trim() || "#ddd";
    context.fillRect(0, height - 1, width, 1);
    context.fillStyle = style.color || "#2563eb";
    this.counts.forEach((count, index) => {
      if (count === 0) return;
      const bar = Math.max(2, ((height - 14) * count) / peak);
      context.fillRect(index * slot + 1, height - bar, Math.max(1, slot - 2), bar);
    });
    context.fillStyle = style.getPropertyValue("--muted").trim() || "#666";
    context.font = "11px system-ui, sans-serif";
    context.textBaseline = "top";
    context.fillText(`peak ${peak}/s · last ${SECONDS} s`, 4, 1);
  }
}
