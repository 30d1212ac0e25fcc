// The shared limiter's 429 pause, as the tests that provoke one on purpose see and end it.
// A 429 pauses every instance (paused_until, honouring Retry-After), pushes the next free
// slot past the pause and halves the shared rate; a test that has asserted that and wants
// the next run to work ends the pause as if its time had passed.
type Sql = (text: string, params?: unknown[]) => Promise<any[]>;

export interface RatePause {
  /** Milliseconds of pause left (≤ 0: none in force). */
  leftMs: number;
  /**
   * The length of the pause the last penalizing 429 set (paused_until − penalized_at, both from
   * one statement): exact however long the test took to look. Meaningful after endRatePause().
   */
  setMs: number;
  rateFactor: number;
  /** 429s reported since the database was created. */
  reported: number;
}

export async function ratePause(sql: Sql): Promise<RatePause> {
  const [row] = await sql(`select coalesce(extract(epoch from paused_until - clock_timestamp()) * 1000, 0)::float8 as left_ms,
                                  coalesce(extract(epoch from paused_until - penalized_at) * 1000, 0)::float8 as set_ms,
                                  rate_factor::float8 as rate_factor, rate_limited_total
                             from amocrm.rate_limiter where key = 'amocrm'`);
  return { leftMs: Number(row!.left_ms), setMs: Number(row!.set_ms), rateFactor: Number(row!.rate_factor), reported: Number(row!.rate_limited_total) };
}

/**
 * Ends a pause in force and restores the full rate. The next free slot moves no earlier than
 * one second from now: every request sent before this call is then out of amoCRM's 1 s window,
 * so the next test's requests cannot bunch with this one's. (A slot merely reserved, with no
 * pause in force, is left where it is.)
 */
export async function endRatePause(sql: Sql): Promise<void> {
  await sql(`update amocrm.rate_limiter
                set next_free_at = case when paused_until > clock_timestamp()
                                        then least(next_free_at, clock_timestamp() + interval '1 second')
                                        else next_free_at end,
                    paused_until = null, rate_factor = 1, penalized_at = null
              where key = 'amocrm'`);
}
