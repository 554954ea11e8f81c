// Shared by both review pages: the accepts-left estimate of a GET /api/v1/next answer, as a short
// label for the bar and one line with its basis (the random share's accept rate, or why none yet).
window.reviewEstimate = (answer) => {
  "use strict";
  const est = answer.estimated_remaining_accepts;
  const interval = answer.estimate && answer.estimate.interval;
  const value = est == null ? "no estimate yet" : "~" + est + (interval ? " (95 %: " + interval[0] + "–" + interval[1] + ")" : "");
  return {
    short: est == null ? "" : " · ~" + est + " accepts left",
    line: "accepts left: " + value + (answer.estimate ? "; basis: " + answer.estimate.basis : ""),
  };
};
