// The backstop for missed hooks: the scheduled run reads amoCRM's events feed, with spare
// rate capacity only (never ahead of a lesson event), and applies every stage change
// through the same SQL as the hooks: what a hook already brought is recorded once.
//
// It reads in windows: changes created from..to, `to` fixed when the window starts. The
// changes of a fixed window no longer change, so its page numbers stay put (whichever
// order the feed pages in), and a run cut short leaves the page to go on at: the next run
// resumes there instead of starting over. Only a window read in full moves the start of
// the next one. However many changes a window holds, each run reads further into it.
import { AmoError } from '../amocrm/errors.ts';
import type { LeadChange } from '../amocrm/hook-form.ts';
import type { AmoEvent } from '../amocrm/resources.ts';
import { applyChanges, getFeedState, putFeedState, type FeedState } from '../db/deal-mirror.ts';
import type { Runtime } from '../runtime.ts';
import type { Logger } from '../log.ts';
import { logChanges } from './apply.ts';

/** A new window starts this far before the last one ended: events are stamped when they happen, not when the feed shows them. */
const OVERLAP_SECONDS = 120;
/** On the very first read, look back this far. */
const FIRST_LOOKBACK_SECONDS = 3600;
/** amoCRM's most for events. */
const PAGE_SIZE = 100;
/** No spare slot at the instant the run asks (a webhook's request, another instance's): ask again this much later. */
const SPARE_RETRY_MS = 250;

export interface FeedReport {
  read: number;
  changed: number;
  pages: number;
  /** done: the window is read in full. Otherwise the next run goes on at window.nextPage. */
  stoppedBy: 'done' | 'pages' | 'budget' | 'no_spare_capacity';
  /** The window read (unix seconds, both ends inclusive); nextPage null once read in full. */
  window: { from: number; to: number; nextPage: number | null };
  /** How far behind the feed may be: now − the end of the last window read in full. */
  lagSeconds: number;
}

/**
 * maxPages: 50 pages of 100 = 5,000 stage changes per scheduled run, far beyond a webinar's
 * burst. budgetMs: no page is started after it, and waiting for a spare slot ends with it.
 */
export async function reconcileFeed(rt: Runtime, { maxPages = 50, budgetMs = 15_000 } = {}): Promise<FeedReport> {
  const { db, clock, log } = rt;
  const started = clock.now();
  const left = () => budgetMs - (clock.now() - started);
  const now = Math.floor(started / 1000);
  const state = await getFeedState(db);
  const window = windowOf(state, now);
  const resumed = window.page > 1;
  const amo = rt.invocation(0, { lane: 'spare' }).amo;
  const report: FeedReport = { read: 0, changed: 0, pages: 0, stoppedBy: 'done', window: { from: window.from, to: window.to, nextPage: window.page }, lagSeconds: state?.lag_seconds ?? now - window.from };
  let page = window.page;
  let saved: FeedState | null = state;
  let complete = false;
  while (!complete) {
    if (report.pages >= maxPages) {
      report.stoppedBy = 'pages';
      break;
    }
    if (left() <= 0) {
      report.stoppedBy = 'budget';
      break;
    }
    let result;
    try {
      result = await amo.listEvents({ type: 'lead_status_changed', from: window.from, to: window.to, page, limit: PAGE_SIZE });
    } catch (err) {
      if (!(err instanceof AmoError && err.code === 'no_spare_capacity')) throw err; // the pages read so far are saved
      // Taking only spare slots must not mean skipping the run: a lesson request in flight
      // or another instance's reservation passes within a slot or two.
      if (left() > SPARE_RETRY_MS) {
        await clock.sleep(SPARE_RETRY_MS);
        continue;
      }
      report.stoppedBy = 'no_spare_capacity';
      break;
    }
    const changes = result.events.map(toChange).filter((c): c is LeadChange => c !== undefined);
    report.read += result.events.length;
    report.pages++;
    if (changes.length) {
      const { results } = await applyChanges(db, changes, 'feed', rt.config.pipelineId ?? 0);
      report.changed += logChanges(rt, results, 'feed');
    }
    page++;
    complete = !result.more;
    // Saved page by page: a run killed mid-way loses at most the page it was on.
    saved = await putFeedState(db, complete
      ? { readThrough: window.to, window: null }
      : { readThrough: state?.read_through ?? null, window: { from: window.from, to: window.to, page } });
  }
  report.window.nextPage = complete ? null : page;
  report.lagSeconds = saved?.lag_seconds ?? report.lagSeconds;
  logFeed(log, report, resumed);
  return report;
}

/** A window left unread is a warning; one finished by a later run, good news. */
function logFeed(log: Logger, report: FeedReport, resumed: boolean): void {
  const { from, to, nextPage } = report.window;
  const fields = { pages: report.pages, read: report.read, from, to, lag_s: report.lagSeconds };
  if (nextPage !== null) {
    log.warn(report.pages
      ? 'Лента событий amoCRM прочитана не до конца: следующий плановый запуск продолжит с той же страницы'
      : 'Лента событий amoCRM не прочитана: следующий плановый запуск повторит', { code: report.stoppedBy, next_page: nextPage, ...fields });
  } else if (resumed) {
    log.ok('Лента событий amoCRM дочитана: пропущенные хуками изменения догнаны', fields);
  }
}

/**
 * The window to read: the one a run stopped inside, else a new one from the end of the
 * last (less the overlap) to now. A new window always ends after the last one did, so the
 * stored state moves forward even when two runs fall into one second.
 */
function windowOf(state: FeedState | null, now: number): { from: number; to: number; page: number } {
  if (state?.from != null && state.to != null) return { from: state.from, to: state.to, page: state.page };
  const through = state?.read_through ?? null;
  if (through === null) return { from: now - FIRST_LOOKBACK_SECONDS, to: now, page: 1 };
  return { from: Math.max(0, through - OVERLAP_SECONDS), to: Math.max(now, through + 1), page: 1 };
}

function toChange(e: AmoEvent): LeadChange | undefined {
  const after = e.value_after?.find((v) => v.lead_status)?.lead_status;
  const before = e.value_before?.find((v) => v.lead_status)?.lead_status;
  if (e.entity_type !== 'lead' || !after || !Number.isSafeInteger(Number(e.entity_id))) return undefined;
  return {
    lead_id: Number(e.entity_id), action: 'status',
    pipeline_id: Number(after.pipeline_id), status_id: Number(after.id),
    ...(before ? { old_pipeline_id: Number(before.pipeline_id), old_status_id: Number(before.id) } : {}),
    modified_at: Number(e.created_at), ...(e.created_by ? { modified_by: Number(e.created_by) } : {}),
  };
}
