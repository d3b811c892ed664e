"""Every numba-compiled function of the detector, and the array layout they share.

They live in one module on purpose: numba's on-disk cache (cache=True) is
invalidated only when the file holding a function changes, not when a function
or constant it uses from another module changes. Split across files, an edit
to one kernel could leave a stale compiled caller that silently computes the
old thing. Keep every kernel and every layout constant here.

The hot path is `step`: per-tag detectors, sample-and-hold of the last good
values, robust scaling (+ optional input smoothing), PCA T²/SPE,
IsolationForest, fusion, the alarm decision and the adaptive baselines for one
frame. `run_batch` calls `step` row by row inside numba, so replay equals live
bit for bit.

Adaptive baselines (drift without blindness): each tag keeps a slow exponentially
weighted mean of its raw values and a slow EW mean square of its EWMA innovation
(its short-term spread; a slow level change barely moves it, so a ramp is never
learnt as a wider spread), both started at the fitted ones. The multivariate
models see each value mapped from the current baseline onto the fitted one
(shift the level, rescale the spread), and CUSUM and the rate limit scale with the
current spread, so a slow drift of level or variance is followed instead of alarmed.
The PCA loadings stay fixed: a slow change of the correlation between tags is
exactly what SPE is there to catch, and a re-derived basis would need control
limits nobody calibrated. Learning is frozen on every frame that is suspicious
(see `adapt_baselines`), so a fault is never learnt as normal.

Every output and every piece of state stays finite for every finite input: a
value outside a tag's usable range (TP_RANGE_LO..TP_RANGE_HI, at most
±VALUE_ABS_MAX) is flagged and never folded into any state, so no square can
overflow, and every normalised score is capped (SCORE_CAP, BINARY_CAP).
"""

import math

import numpy as np
from numba import njit

from models.names import (  # noqa: F401  (re-exported: the kernels' flag contract)
    COMPONENT_NAMES,
    FLAG_BITS,
    FLAG_CUSUM,
    FLAG_EWMA,
    FLAG_FLAT,
    FLAG_INVALID,
    FLAG_LIMIT,
    FLAG_NAMES,
    FLAG_ROC,
)

# Per-tag parameters: tag_params[N, TP_SIZE]
TP_LO = 0  # hard low limit (-inf disables)
TP_HI = 1  # hard high limit (+inf disables)
TP_ROC_MAX = 2  # max |dx/dt| per second before a spike is flagged (+inf disables)
TP_FLAT_SECONDS = 3  # flag stuck when the value moved less than TP_FLAT_EPS for this long (0 disables)
TP_FLAT_EPS = 4
TP_EWMA_ALPHA = 5  # EWMA weight of a new sample for the adaptive mean/variance
TP_Z_MAX = 6  # |z| against the EWMA above which a sample is flagged (+inf disables)
TP_STD0 = 7  # fitted robust std of the EWMA innovation (x - EWMA mean before x)
TP_CUSUM_K = 8  # CUSUM allowance, in innovation sigmas
TP_CUSUM_H = 9  # CUSUM decision interval, in innovation sigmas (+inf disables)
TP_WARMUP = 10  # samples before the EWMA z-score may flag
TP_LINE_MASK = 11  # FLAG_* bits of the detectors whose scores feed the line score
TP_CENTER = 12  # robust scaler: z = (x - centre) * inv_scale
TP_INV_SCALE = 13
TP_PCA_MEAN = 14  # PCA centre in scaled space
TP_RANGE_LO = 15  # usable range: a fresh value outside it is flagged LIMIT and never used
TP_RANGE_HI = 16
TP_BASE_MEAN = 17  # fitted mean of the raw values: where the adaptive baseline starts
TP_BASE_VAR = 18  # fitted mean square of the EWMA innovation (0: the spread is never adapted)
TP_SIZE = 19

# Per-tag state: tag_state[N, TS_SIZE]
TS_HELD = 0  # last good value (sample-and-hold input of the multivariate models)
TS_HAVE = 1  # 1 once a good value has been seen
TS_LAST_T = 2  # time of the last good sample
TS_ANCHOR_X = 3  # value at the start of the current flat run
TS_ANCHOR_T = 4  # time the current flat run started
TS_EW_MEAN = 5
TS_EW_VAR = 6
TS_EW_N = 7  # good samples seen by the EWMA
TS_CUSUM_POS = 8
TS_CUSUM_NEG = 9
TS_COND = 10  # FLAG_INVALID / FLAG_LIMIT while the latest fresh sample was unusable, else 0
TS_U = 11  # scaled (and smoothed) held value: the multivariate models' input
TS_BASE_MEAN = 12  # adaptive baseline: slow EW mean of the raw values
TS_BASE_VAR = 13  # slow EW mean square of the EWMA innovation (the short-term spread)
TS_BASE_GAIN = 14  # sqrt(TP_BASE_VAR / TS_BASE_VAR), clamped: maps today's spread onto the fitted one
TS_INNOV = 15  # this sample's EWMA innovation (x - EWMA mean before x), for the adaptive spread
TS_SIZE = 16

# Flag bits in the per-tag output (int32 bitmask): FLAG_* from models.names (imported above).
# Flags that freeze the adaptive baselines for the whole line while any tag shows one. CUSUM
# is left out: it flags every change of operating point (advisory), and a drift must be learnt.
ADAPT_FREEZE_FLAGS = FLAG_INVALID | FLAG_LIMIT | FLAG_ROC | FLAG_FLAT | FLAG_EWMA
# Bounds of TS_BASE_GAIN: the spread may drift 10x either way before the correction stops.
ADAPT_GAIN_MAX = 10.0
# Bound of the level's drift, in the tag's robust scales from its fitted level: past it the
# baseline stops following, so a fault crept in steps each too small to alarm (boiling frog)
# is seen once the line has walked this far from where it was fitted (then refit).
ADAPT_SHIFT_MAX = 10.0

# Step outputs: out[O_SIZE] per frame (one row per frame in replay). The first C_SIZE
# entries are the component scores, each normalised so 1.0 == its own threshold.
C_TAGS = 0  # max over tags of the per-tag normalised scores
C_T2 = 1  # PCA Hotelling T²
C_SPE = 2  # PCA squared prediction error (Q)
C_IFOREST = 3
C_SIZE = 4  # in the order of models.names.COMPONENT_NAMES
O_SCORE = C_SIZE  # line score in [0, 1)
O_ALARM = C_SIZE + 1  # 1.0 while the line alarm is active
O_SIZE = C_SIZE + 2

# IsolationForest nodes: f_nodes[M, 3] int32 = split feature, first child, and the split
# threshold as float32 bits. The two children of a node are adjacent (right = left + 1),
# so a step down is `child + (x > threshold)` with no branch; a leaf points to itself
# with a +inf threshold, so every walk can run a fixed number of levels.
F_FEATURE = 0
F_CHILD = 1
F_THRESHOLD = 2
F_LOCKSTEP = 16  # trees walked side by side: independent loads overlap in the CPU

# Decision parameters: decision_params[D_SIZE]
D_SMOOTH_ALPHA = 0  # EWMA weight on the fused score (1.0 = no smoothing)
D_THRESHOLD_ON = 1  # line score above which a step counts as exceeding
D_THRESHOLD_OFF = 2  # line score below which a step counts as clear (hysteresis)
D_K = 3  # debounce: raise when >= K of the last N steps exceed
D_N = 4
D_CLEAR_N = 5  # clear after this many consecutive steps below the off threshold
D_W_TAGS = 6  # fusion weights per component (0 disables the component)
D_W_T2 = 7
D_W_SPE = 8
D_W_IFOREST = 9
D_INPUT_ALPHA = 10  # EWMA weight on the scaled inputs of the multivariate models (1.0 = none)
D_COMP_LOC = 11  # C_SIZE entries: per-component normalisation (raw - loc) / (thr - loc)
D_COMP_THR = D_COMP_LOC + C_SIZE
D_F_DENOMINATOR = D_COMP_THR + C_SIZE  # trees x c(max_samples) of the IsolationForest
D_F_DEPTH = D_F_DENOMINATOR + 1  # deepest tree of the IsolationForest
D_ADAPT_RATE = D_F_DEPTH + 1  # weight of a new sample in the adaptive baselines (0 = fixed baselines)
D_ADAPT_RESUME = D_ADAPT_RATE + 1  # frames the alarm must have been off before learning resumes
D_SIZE = D_ADAPT_RESUME + 1

# Decision state: decision_state[DS_SIZE + max N]; the tail is the k-of-n ring buffer
DS_SMOOTHED = 0
DS_ALARM = 1
DS_RING_POS = 2
DS_RING_COUNT = 3  # exceedances currently in the ring
DS_CLEAR_RUN = 4
DS_STEPS = 5
DS_MV_STEPS = 6  # frames the multivariate models have scored (input smoothing starts at 0)
DS_BASE_READY = 7  # 1 once the adaptive baselines were started from the fitted ones
DS_ADAPT_STEPS = 8  # frames the adaptive baselines learnt from
DS_ADAPT_FROZEN = 9  # frames on which learning was frozen (suspicious or incomplete)
DS_QUIET = 10  # frames since the alarm was last on (capped at D_ADAPT_RESUME)
DS_SIZE = 11

# Status returned by `step` (0 = done); on any other value nothing was touched.
STEP_OK = 0
STEP_BAD_LENGTH = 1  # a frame or output array does not have one entry per tag
STEP_BAD_TIME = 2  # t is NaN or infinite
# `step` is compiled for exactly these types (C-contiguous arrays) and never for others, so
# a frame of the wrong dtype or dimension is refused by numba's dispatch at no cost.
STEP_SIGNATURE = ("int64(float64, float64[::1], uint8[::1], uint8[::1], float64[:, ::1], "
                  "float64[:, ::1], float64[:, ::1], float64[::1], int32[:, ::1], float64[::1], "
                  "int32[::1], float64[::1], float64[::1], int32[::1], float64[::1], float64[::1])")


# ----------------------------------------------------------------- per-tag detectors
# Validity, usable range, hard limits, rate of change, flatline, EWMA z-score and
# CUSUM run in one pass so each tag's row of parameters and state is touched once
# per step. A fresh sample that is NaN/inf or of bad quality is flagged INVALID, one
# outside the usable range LIMIT; neither updates any statistic. These conditions,
# and a held value beyond the hard limits, persist until the tag's next fresh
# sample; rate, z-score and CUSUM judge a sample, so they are set on fresh steps only.

# Normalised score of a hard-limit breach or a flatline, at least. Both are certain facts,
# not statistics, so the score is large enough to raise the line alarm on its own: even
# smoothed with alpha 0.01 it stays above MAX_LINE_THRESHOLD. They are graded by how bad
# they are, so they rank among themselves (BINARY_SCORE x grade, grade 1..BINARY_GRADES):
# a breach of a hard limit by 1 + its excess in robust scales, a value outside the usable
# range at the top grade, a flatline by its length in flatline limits.
BINARY_SCORE = 1e4
BINARY_GRADES = 100.0
MAX_LINE_THRESHOLD = 0.99  # line threshold cap (a fused score of 99 x the component thresholds)
# No statistic is more certain than a limit breach: every statistical score (rate, z-score,
# CUSUM, T², SPE, forest) is capped at the lowest grade of a binary finding, and the graded
# findings at BINARY_CAP, which also lets a smoothed line score recover in bounded time.
SCORE_CAP = BINARY_SCORE
BINARY_CAP = BINARY_SCORE * BINARY_GRADES
# Usable range of a fitted tag: centre ± RANGE_SCALES robust scales (widened to hold every
# training value), never beyond ±VALUE_ABS_MAX. Not a plausibility check (hard limits are):
# it keeps values the arithmetic cannot use out of the state. Squares of differences of
# values within ±1e100 stay below 1e201, and the fitted scales (>= 1e-9) and PCA
# eigenvalues (>= 1e-12) keep every product finite.
RANGE_SCALES = 1e6
VALUE_ABS_MAX = 1e100


@njit(cache=True, nogil=True)
def tag_step(t, x, fresh, good, tp, ts, flags_out, score_out):
    """Update every tag with frame (t, x, fresh, good); return the line's share of the tag scores.

    Scores are normalised so 1.0 is each detector's own threshold. score_out gets
    each tag's max over all its detectors; the return value is the max over the
    detectors named in each tag's TP_LINE_MASK. The rate limit and the CUSUM sigma
    are divided by ts[:, TS_BASE_GAIN] (1.0 = the fitted spread; `start_baselines`).
    """
    best = 0.0
    for i in range(x.shape[0]):
        flags = 0
        score = 0.0
        line = 0.0
        mask = int(tp[i, TP_LINE_MASK])
        if fresh[i]:
            v = x[i]
            if good[i] == 0 or not math.isfinite(v):
                ts[i, TS_COND] = FLAG_INVALID
            elif v < tp[i, TP_RANGE_LO] or v > tp[i, TP_RANGE_HI]:
                ts[i, TS_COND] = FLAG_LIMIT
            else:
                ts[i, TS_COND] = 0.0
                gain = ts[i, TS_BASE_GAIN]
                if ts[i, TS_HAVE] > 0.0:
                    # No rate across a duplicate or backward time stamp (dt <= 0).
                    dt = t - ts[i, TS_LAST_T]
                    roc_max = tp[i, TP_ROC_MAX]
                    if dt > 0.0 and roc_max < math.inf:
                        # The rate limit grows with the adapted spread (gain < 1 when wider).
                        rate = min(abs(v - ts[i, TS_HELD]) / dt / roc_max * gain, SCORE_CAP)
                        if rate > 1.0:
                            flags |= FLAG_ROC
                        score = max(score, rate)
                        if mask & FLAG_ROC:
                            line = max(line, rate)
                    if abs(v - ts[i, TS_ANCHOR_X]) > tp[i, TP_FLAT_EPS]:
                        ts[i, TS_ANCHOR_X] = v
                        ts[i, TS_ANCHOR_T] = t
                else:
                    ts[i, TS_ANCHOR_X] = v
                    ts[i, TS_ANCHOR_T] = t

                # EWMA z-score and CUSUM both judge the innovation against the EWMA *before* this sample.
                alpha = tp[i, TP_EWMA_ALPHA]
                n_seen = ts[i, TS_EW_N]
                if n_seen == 0.0:
                    ts[i, TS_EW_MEAN] = v
                    ts[i, TS_EW_VAR] = tp[i, TP_STD0] * tp[i, TP_STD0]
                else:
                    dev = v - ts[i, TS_EW_MEAN]
                    ts[i, TS_INNOV] = dev
                    var = ts[i, TS_EW_VAR]
                    if n_seen >= tp[i, TP_WARMUP] and var > 0.0:
                        z = min(abs(dev) / math.sqrt(var) / tp[i, TP_Z_MAX], SCORE_CAP)
                        if z > 1.0:
                            flags |= FLAG_EWMA
                        score = max(score, z)
                        if mask & FLAG_EWMA:
                            line = max(line, z)
                    # Two-sided CUSUM of the EWMA innovation, in fitted innovation sigmas:
                    # a sustained shift keeps the innovation biased until the EWMA catches up.
                    zb = dev / tp[i, TP_STD0] * gain
                    k = tp[i, TP_CUSUM_K]
                    # Clamped at 2h so it recovers within 2h/k samples once a shift ends.
                    cap = 2.0 * tp[i, TP_CUSUM_H]
                    pos = min(cap, max(0.0, ts[i, TS_CUSUM_POS] + zb - k))
                    neg = min(cap, max(0.0, ts[i, TS_CUSUM_NEG] - zb - k))
                    ts[i, TS_CUSUM_POS] = pos
                    ts[i, TS_CUSUM_NEG] = neg
                    c = max(pos, neg) / tp[i, TP_CUSUM_H]
                    if c > 1.0:
                        flags |= FLAG_CUSUM
                    score = max(score, c)
                    if mask & FLAG_CUSUM:
                        line = max(line, c)

                    ts[i, TS_EW_MEAN] += alpha * dev
                    ts[i, TS_EW_VAR] = (1.0 - alpha) * (var + alpha * dev * dev)
                ts[i, TS_EW_N] = n_seen + 1.0

                ts[i, TS_HELD] = v
                ts[i, TS_HAVE] = 1.0
                ts[i, TS_LAST_T] = t

        # The tag's condition holds until its next fresh sample: an unusable latest sample,
        # or a held value beyond the hard limits (judged every step, so new limits apply at once).
        unusable = int(ts[i, TS_COND])
        cond = unusable
        if ts[i, TS_HAVE] > 0.0:
            held = ts[i, TS_HELD]
            if cond == 0 and (held < tp[i, TP_LO] or held > tp[i, TP_HI]):
                cond = FLAG_LIMIT
            if t < ts[i, TS_ANCHOR_T]:
                ts[i, TS_ANCHOR_T] = t  # time went backwards: the flat run restarts now
        flags |= cond
        if cond & FLAG_LIMIT:
            grade = BINARY_GRADES  # outside the usable range
            if unusable == 0:  # the held value beyond a hard limit: by its excess in robust scales
                held = ts[i, TS_HELD]
                excess = max(held - tp[i, TP_HI], tp[i, TP_LO] - held) * tp[i, TP_INV_SCALE]
                grade = 1.0 + min(excess, BINARY_GRADES - 1.0)
            score = max(score, BINARY_SCORE * grade)
            if mask & FLAG_LIMIT:
                line = max(line, BINARY_SCORE * grade)

        # Flatline is judged on time, so a subscription that stops reporting
        # because the value no longer changes is caught too.
        flat = tp[i, TP_FLAT_SECONDS]
        if (flat > 0.0 and ts[i, TS_HAVE] > 0.0 and unusable == 0
                and t - ts[i, TS_ANCHOR_T] >= flat):
            flags |= FLAG_FLAT
            grade = min((t - ts[i, TS_ANCHOR_T]) / flat, BINARY_GRADES)  # >= 1: in flatline limits
            score = max(score, BINARY_SCORE * grade)
            if mask & FLAG_FLAT:
                line = max(line, BINARY_SCORE * grade)

        flags_out[i] = flags
        score_out[i] = score
        best = max(best, line)
    return best


@njit(cache=True, nogil=True)
def ewma_innovations(x, alpha):
    """x[t] - EWMA mean before x[t], per column, for t >= 1: what CUSUM and the z-score see."""
    out = np.empty((x.shape[0] - 1, x.shape[1]))
    for j in range(x.shape[1]):
        mean = x[0, j]
        for t in range(1, x.shape[0]):
            dev = x[t, j] - mean
            out[t - 1, j] = dev
            mean += alpha * dev
    return out


@njit(cache=True, nogil=True)
def cusum_peaks(innovations, sigma, k):
    """Largest two-sided CUSUM statistic per column over a run of innovations (fitting aid)."""
    peaks = np.zeros(innovations.shape[1])
    for j in range(innovations.shape[1]):
        pos = 0.0
        neg = 0.0
        for t in range(innovations.shape[0]):
            z = innovations[t, j] / sigma[j]
            pos = max(0.0, pos + z - k)
            neg = max(0.0, neg - z - k)
            peaks[j] = max(peaks[j], pos, neg)
    return peaks


# ----------------------------------------------------------------- multivariate models
@njit(cache=True, nogil=True)
def pca_score(tp, ts, components, inv_eig):
    """Hotelling T² and SPE of the scaled input ts[:, TS_U] (centred on tp[:, TP_PCA_MEAN])."""
    n = tp.shape[0]
    total = 0.0
    for i in range(n):
        c = ts[i, TS_U] - tp[i, TP_PCA_MEAN]
        total += c * c
    t2 = 0.0
    explained = 0.0
    for j in range(components.shape[0]):
        s = 0.0
        for i in range(n):
            s += components[j, i] * (ts[i, TS_U] - tp[i, TP_PCA_MEAN])
        t2 += s * s * inv_eig[j]
        explained += s * s
    return t2, max(total - explained, 0.0)


@njit(cache=True, nogil=True)
def iforest_score(u, nodes, leaf_depth, roots, denominator, max_depth):
    """Anomaly score of sample u: 2 ** (-mean path length / c(max_samples)) = -score_samples.

    Thresholds are stored as the largest float32 not above sklearn's float64
    threshold, so float32(u) > it exactly when sklearn sends the sample right.
    Path lengths are summed tree by tree in sklearn's order.
    """
    thresholds = nodes.view(np.float32)
    cursor = np.empty(F_LOCKSTEP, dtype=np.int32)
    u32 = np.empty(u.shape[0], dtype=np.float32)  # converted once, not at every node
    for i in range(u.shape[0]):
        u32[i] = u[i]
    depth = 0.0
    trees = roots.shape[0]
    first = 0
    while first < trees:
        k = min(F_LOCKSTEP, trees - first)
        for j in range(k):
            cursor[j] = roots[first + j]
        for _ in range(max_depth):
            for j in range(k):
                node = cursor[j]
                go_right = u32[nodes[node, F_FEATURE]] > thresholds[node, F_THRESHOLD]
                cursor[j] = nodes[node, F_CHILD] + go_right
        for j in range(k):
            depth += leaf_depth[cursor[j]]
        first += k
    if denominator == 0.0:
        return 0.5
    return 2.0 ** (-depth / denominator)


# `iforest_path_credit` is compiled for exactly these types at import (no JIT when an alarm is explained).
PATH_SIGNATURE = "void(float64[::1], int32[:, ::1], float64[::1], int32[::1], int64, float64[::1])"


@njit(PATH_SIGNATURE, cache=True, nogil=True)
def iforest_path_credit(u, nodes, leaf_depth, roots, max_depth, credit):
    """Which features isolate sample u: credit[f] = sum over trees of (splits on f on u's path) / L.

    L is the path length the tree gives u (its leaf_depth), so each tree shares about one
    unit among the splits that isolated u, and a feature that does it near the root gets a
    large part: a one-sample, depth-weighted split count in the spirit of DIFFI (Carletti
    et al., 2020). For attribution on demand, never on the hot path.
    """
    thresholds = nodes.view(np.float32)
    credit[:] = 0.0
    path = np.empty(max(max_depth, 1), dtype=np.int32)  # features split on, root first
    for r in range(roots.shape[0]):
        node = roots[r]
        splits = 0
        for _ in range(max_depth):
            if nodes[node, F_CHILD] == node:  # a leaf points to itself
                break
            feature = nodes[node, F_FEATURE]
            path[splits] = feature
            splits += 1
            node = nodes[node, F_CHILD] + (np.float32(u[feature]) > thresholds[node, F_THRESHOLD])
        weight = 1.0 / max(leaf_depth[node], 1.0)
        for j in range(splits):
            credit[path[j]] += weight


# ----------------------------------------------------------------- fusion and decision
@njit(cache=True, nogil=True)
def fuse(components, dp, ds):
    """Weighted max of components[:C_SIZE], EWMA-smoothed; returns the line score in [0, 1)."""
    fused = 0.0
    for c in range(C_SIZE):
        fused = max(fused, dp[D_W_TAGS + c] * components[c])
    alpha = dp[D_SMOOTH_ALPHA]
    smoothed = fused if ds[DS_STEPS] == 0.0 else alpha * fused + (1.0 - alpha) * ds[DS_SMOOTHED]
    ds[DS_SMOOTHED] = smoothed
    ds[DS_STEPS] += 1.0
    return smoothed / (1.0 + smoothed)


@njit(cache=True, nogil=True)
def decide(score, dp, ds):
    """Advance the debounce ring and hysteresis with this step's line score; return 1 if alarming."""
    n = int(dp[D_N])
    pos = int(ds[DS_RING_POS])
    exceed = 1.0 if score > dp[D_THRESHOLD_ON] else 0.0
    ds[DS_RING_COUNT] += exceed - ds[DS_SIZE + pos]
    ds[DS_SIZE + pos] = exceed
    ds[DS_RING_POS] = (pos + 1) % n

    if score < dp[D_THRESHOLD_OFF]:
        ds[DS_CLEAR_RUN] += 1.0
    else:
        ds[DS_CLEAR_RUN] = 0.0

    if ds[DS_ALARM] == 0.0:
        if ds[DS_RING_COUNT] >= dp[D_K]:
            ds[DS_ALARM] = 1.0
    elif ds[DS_CLEAR_RUN] >= dp[D_CLEAR_N]:
        # Clearing forgets the exceedance history, else the old exceedances still in the
        # ring would raise the alarm again at once.
        ds[DS_ALARM] = 0.0
        ds[DS_RING_COUNT] = 0.0
        for j in range(n):
            ds[DS_SIZE + j] = 0.0
    return int(ds[DS_ALARM])


# ----------------------------------------------------------------- adaptive baselines
# Default half-life of the adaptive baselines, in training windows (DetectorSpec.drift_half_life
# None = this many times the training rows). Much longer than the longest fault the training
# window can tell from normal (one as long as the window): such a fault, if it never alarmed,
# would be learnt at most 1 - 2**-0.25 = 16 % by its end; a drift of d per training window
# lags the baseline by about 1.44 x 4 x d, so drifts up to ~0.25 sigma per training window are
# followed within ~1.5 sigma, and a faster drift must be in the training window.
DRIFT_HALF_LIFE_WINDOWS = 4.0
# After an alarm, learning resumes once the alarm has been off for a while, so that a sustained
# fault whose alarm flickers off now and then is never learnt; but not so long that the false
# alarms of normal data keep it frozen. The wait is the shorter of a tenth of a half-life (learning
# would have moved a baseline only 1 - 2**-0.1 = 7 % of the way in it, so little drift is lost)
# and a tenth of the mean gap between false alarms at the designed rate (so normal data keeps
# learning at least ~90 % of the time).
ADAPT_RESUME_HALF_LIVES = 0.1
ADAPT_RESUME_ALARM_GAPS = 0.1


def adaptation_params(half_life: float, target_far: float) -> tuple[float, float]:
    """(D_ADAPT_RATE, D_ADAPT_RESUME) for a half-life in samples of each tag and the designed
    false-alarm rate per frame; a half-life of 0 or inf gives (0, 0): fixed baselines."""
    if not half_life > 0.0 or math.isinf(half_life):
        return 0.0, 0.0
    resume = min(ADAPT_RESUME_HALF_LIVES * half_life, ADAPT_RESUME_ALARM_GAPS / target_far)
    return 1.0 - 2.0 ** (-1.0 / half_life), float(math.ceil(resume))


@njit(cache=True, nogil=True)
def start_baselines(tp, ts, dp, ds):
    """Start every tag's adaptive baseline at its fitted level and spread (gain 1.0), ready to learn."""
    for i in range(tp.shape[0]):
        ts[i, TS_BASE_MEAN] = tp[i, TP_BASE_MEAN]
        ts[i, TS_BASE_VAR] = tp[i, TP_BASE_VAR]
        ts[i, TS_BASE_GAIN] = 1.0
    ds[DS_QUIET] = dp[D_ADAPT_RESUME]
    ds[DS_BASE_READY] = 1.0


@njit(cache=True, nogil=True)
def adapt_baselines(x, fresh, flags, ready, score, tp, ts, dp, ds):
    """Learn this frame into the adaptive baselines unless anything about it is suspicious.

    Runs after the decision, so a frame is judged against the baselines before it and
    learnt only if it was judged normal. Frozen for the whole line while the alarm is
    on and until it has been off for D_ADAPT_RESUME frames, while the line score is
    above the clear threshold (also while debouncing), while any tag shows one of
    ADAPT_FREEZE_FLAGS (invalid, limit, rate, flatline, z-score: the conditions persist
    until a good sample), and until every tag has a value.
    Only a tag's fresh samples are learnt, so a stale tag keeps its baseline; the spread
    learns from the second sample on (the first has no innovation).
    """
    if ds[DS_ALARM] != 0.0:
        ds[DS_QUIET] = 0.0
    elif ds[DS_QUIET] < dp[D_ADAPT_RESUME]:
        ds[DS_QUIET] += 1.0
    frozen = not ready or ds[DS_QUIET] < dp[D_ADAPT_RESUME] or score > dp[D_THRESHOLD_OFF]
    if not frozen:
        for i in range(x.shape[0]):
            if flags[i] & ADAPT_FREEZE_FLAGS:
                frozen = True
                break
    if frozen:
        ds[DS_ADAPT_FROZEN] += 1.0
        return
    rate = dp[D_ADAPT_RATE]
    for i in range(x.shape[0]):
        if fresh[i]:  # good and within the usable range: no freeze flag was set
            level = ts[i, TS_BASE_MEAN] + rate * (x[i] - ts[i, TS_BASE_MEAN])
            reach = ADAPT_SHIFT_MAX / tp[i, TP_INV_SCALE]
            ts[i, TS_BASE_MEAN] = min(max(level, tp[i, TP_BASE_MEAN] - reach), tp[i, TP_BASE_MEAN] + reach)
            if ts[i, TS_EW_N] < 2.0:
                continue
            innov = ts[i, TS_INNOV]
            var = ts[i, TS_BASE_VAR] + rate * (innov * innov - ts[i, TS_BASE_VAR])
            ts[i, TS_BASE_VAR] = var
            var0 = tp[i, TP_BASE_VAR]
            gain = 1.0
            if var0 > 0.0:
                gain = math.sqrt(var0 / var) if var > 0.0 else ADAPT_GAIN_MAX
                gain = min(max(gain, 1.0 / ADAPT_GAIN_MAX), ADAPT_GAIN_MAX)
            ts[i, TS_BASE_GAIN] = gain
    ds[DS_ADAPT_STEPS] += 1.0


# ----------------------------------------------------------------- the step and replay
@njit(STEP_SIGNATURE, cache=True, nogil=True)
def step(t, x, fresh, good, tag_params, tag_state, pca_components, pca_inv_eig,
         f_nodes, f_leaf_depth, f_roots, decision_params, decision_state,
         tag_flags, tag_scores, out):
    """Process one frame (t, x, fresh, good); results go to tag_flags, tag_scores and out[O_*].

    Returns STEP_OK, or a STEP_BAD_* status without touching anything (lengths are not
    bounds-checked by numba, so they are checked here).
    """
    tp, ts, dp, ds = tag_params, tag_state, decision_params, decision_state
    n = tp.shape[0]
    if (x.shape[0] != n or fresh.shape[0] != n or good.shape[0] != n or ts.shape[0] != n
            or tag_flags.shape[0] != n or tag_scores.shape[0] != n or out.shape[0] != O_SIZE):
        return STEP_BAD_LENGTH
    if not math.isfinite(t):
        return STEP_BAD_TIME
    if ds[DS_BASE_READY] == 0.0:
        start_baselines(tp, ts, dp, ds)
    out[C_TAGS] = tag_step(t, x, fresh, good, tp, ts, tag_flags, tag_scores)
    out[C_T2] = 0.0
    out[C_SPE] = 0.0
    out[C_IFOREST] = 0.0

    use_pca = pca_components.shape[0] > 0
    use_forest = f_roots.shape[0] > 0
    ready = True
    for i in range(n):
        if ts[i, TS_HAVE] == 0.0:
            ready = False
            break
    adapt = dp[D_ADAPT_RATE] > 0.0
    if ready and (use_pca or use_forest):
        alpha = 1.0 if ds[DS_MV_STEPS] == 0.0 else dp[D_INPUT_ALPHA]
        for i in range(n):
            if adapt:  # the held value mapped from today's baseline onto the fitted one
                held = ((ts[i, TS_HELD] - ts[i, TS_BASE_MEAN]) * ts[i, TS_BASE_GAIN]
                        + tp[i, TP_BASE_MEAN])
            else:
                held = ts[i, TS_HELD]
            z = (held - tp[i, TP_CENTER]) * tp[i, TP_INV_SCALE]
            ts[i, TS_U] = alpha * z + (1.0 - alpha) * ts[i, TS_U]
        ds[DS_MV_STEPS] += 1.0
        if use_pca:
            out[C_T2], out[C_SPE] = pca_score(tp, ts, pca_components, pca_inv_eig)
        if use_forest:
            out[C_IFOREST] = iforest_score(ts[:, TS_U], f_nodes, f_leaf_depth, f_roots,
                                           dp[D_F_DENOMINATOR], int(dp[D_F_DEPTH]))
        for c in range(C_T2, C_SIZE):
            loc = dp[D_COMP_LOC + c]
            out[c] = min(max(0.0, (out[c] - loc) / (dp[D_COMP_THR + c] - loc)), SCORE_CAP)

    score = fuse(out, dp, ds)
    out[O_SCORE] = score
    out[O_ALARM] = decide(score, dp, ds)
    if adapt:
        adapt_baselines(x, fresh, tag_flags, ready, score, tp, ts, dp, ds)
    return STEP_OK


@njit(cache=True, nogil=True)
def run_batch(times, xs, fresh, good, tag_params, tag_state, pca_components, pca_inv_eig,
              f_nodes, f_leaf_depth, f_roots, decision_params, decision_state,
              tag_flags, tag_scores, out):
    """Replay rows of (times, xs, fresh, good) through `step`; outputs have one row per input row."""
    for r in range(xs.shape[0]):
        step(times[r], xs[r], fresh[r], good[r], tag_params, tag_state, pca_components,
             pca_inv_eig, f_nodes, f_leaf_depth, f_roots, decision_params, decision_state,
             tag_flags[r], tag_scores[r], out[r])
