"""The relation instance encoder, its Siamese heads, the clustering head, and their losses.

    x  --BERT-->  [h_head ; h_tail ; s_head ; s_tail]  = r    relation representation (D = 4H), paper
                  section 3.1 (start-marker states h) and entity-span means s (RelationEncoder)
    r  --context map-->  r (64 wide)                 fixed, fitted before training without labels
                                                     (lda_map; not in the paper; the default)
    r  --projector-->  z  --predictor-->  p          SimSiam heads, section 3.2
    r  --cluster head-->  softmax  = phi(x)          K cluster probabilities, section 3.3

Siamese loss (SimSiam, Chen & He 2021): the same batch is encoded twice in training mode; the two
dropout masks make the positive pair (r1, r2).  With stop-gradient sg,
    L_siam = -( cos(p1, sg(z2)) + cos(p2, sg(z1)) ) / 2.
There are no negative pairs; the predictor and the stop-gradient keep the features from collapsing.

SCAN loss (Van Gansbeke et al. 2020): for an instance x and a mined neighbour n of it,
    L_scan = -mean_x log <phi(x), phi(n)>  -  lambda * H( mean_x phi(x) ),
the first term makes neighbours agree with confident predictions, the entropy of the mean prediction
keeps all K clusters in use.

The context map is a linear discriminant analysis (`lda_map`) of the pretrained encoder's r whose
"classes" are relation-context groups: instances with the same words between their entities (data.py,
`context_key`), not relations, so it reads no label.  It keeps the directions in which r varies most
against its variation inside such groups, and scales down what only the entities' identity and topic
move.  The kNN vote (`knn_vote`, not in the paper) smooths the head's probabilities over the neighbour graph.
The collapse measure (`z_rank`) watches the Siamese stage; `kmeans` starts the cluster prototypes and
makes the reference points of evaluate.py.  Everything else the stages need to train these modules
(loading the pretrained encoder, batching, the optimiser, checkpoints, scale-out) is in training.py.
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from data import POOLINGS, DataError


class RelationEncoder(nn.Module):
    """r = [h_head ; h_tail] or, with pooling "both", [h_head ; h_tail ; s_head ; s_tail]:
        "markers": h = the hidden state at the entity's start marker <h:TYPE> or <t:TYPE> (the paper);
        "spans":   s = the mean hidden state of the entity's own subwords, between its two markers;
        "both":    the two, side by side (the default);
        "sumdiff": the same four states, each head-tail pair as its sum and its difference,
                   [h_head + h_tail ; h_head - h_tail ; s_head + s_tail ; s_head - s_tail].
    Each part is L2-normalised, so that the parts weigh the same in a cosine whatever their norms in a
    given sentence (the gain this brings is measured in the README, "Choices").  For "sumdiff" the head
    and tail states are normalised first: then a + b and a - b are orthogonal, and the pair is a scaled rotation
    of [a ; b] in which the difference, what tells "located in" from its inverse "contains" in the same
    sentence, is rescaled to weigh as much as what the two entities share.  An instance and its mirror
    (the same sentence, head and tail swapped) have cosine 0 under "sumdiff"; under "both", the mean of
    h_head . h_tail and s_head . s_tail.

    With context_dims (train_siamese.py --context-map, the default; not in the paper), r is last mapped
    by a fixed linear map fitted once, before any training, to the pretrained encoder's r of the training
    data: lda_map with the relation-context groups (encode.py's context_key.npy: the same words between
    the entities) in place of relations, so no label is read.  r becomes the L2-normalised
    (r / |r| - mean) @ map, its context_dims directions those in which instances vary most against
    their variation inside context groups: what the entities' identity and topic move, and a relation
    context does not, is scaled down (README, "Choices")."""

    def __init__(self, bert, pooling="both", context_dims=0):
        super().__init__()
        if pooling not in POOLINGS:
            raise DataError(f"pooling {pooling!r}: must be one of {', '.join(POOLINGS)}")
        self.bert = bert
        self.pooling = pooling
        width = (2 if pooling in ("markers", "spans") else 4) * bert.config.hidden_size
        self.dim = context_dims or width
        # the relation-context map, fixed (not learnt): filled by set_context_map in train_siamese.py or
        # by a saved state dict; None without one
        self.register_buffer("context_mean", torch.zeros(width) if context_dims else None)
        self.register_buffer("context_map", torch.zeros(width, context_dims) if context_dims else None)

    @torch.no_grad()
    def set_context_map(self, mean, m):
        """The fixed relation-context map (lda_map's (mean, map)) that forward applies to r last."""
        self.context_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.context_map.copy_(torch.as_tensor(m, dtype=torch.float32))

    def forward(self, input_ids, attention_mask, head_pos, tail_pos, head_end, tail_end):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        parts = []
        if self.pooling != "spans":
            rows = torch.arange(h.shape[0], device=h.device)
            parts += [h[rows, head_pos], h[rows, tail_pos]]
        if self.pooling != "markers":
            at = torch.arange(h.shape[1], device=h.device)[None, :]
            for start, end in ((head_pos, head_end), (tail_pos, tail_end)):
                inside = ((at > start[:, None]) & (at < end[:, None])).to(h.dtype)[:, :, None]
                parts.append((inside * h).sum(1) / inside.sum(1).clamp(min=1))  # no subwords: zeros
        if self.pooling == "sumdiff":  # (head, tail) -> (head + tail, head - tail), of unit-length states
            units = [F.normalize(p, dim=-1) for p in parts]
            parts = [q for a, b in zip(units[::2], units[1::2]) for q in (a + b, a - b)]
        r = torch.cat([F.normalize(p, dim=-1) for p in parts], dim=-1)
        if self.context_map is None:
            return r
        return F.normalize((F.normalize(r, dim=-1) - self.context_mean) @ self.context_map, dim=-1)


def train_top(encoder, n):
    """Train only the top `n` transformer layers: the embeddings and every lower layer get no gradient
    (their dropout still acts, so the two views still differ).  n = 0 trains everything."""
    layers = encoder.bert.config.num_hidden_layers
    if not 0 <= n <= layers:
        raise DataError(f"--train-layers {n}: the encoder has {layers} layers")
    for name, p in encoder.bert.named_parameters():
        parts = name.split(".")
        layer = int(parts[parts.index("layer") + 1]) if "layer" in parts else None
        if n and (name.startswith("embeddings.") or (layer is not None and layer < layers - n)):
            p.requires_grad_(False)


def projector(dim, out):
    """SimSiam's projection MLP; BatchNorm (not LayerNorm) is what keeps z from collapsing."""
    return nn.Sequential(nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, out, bias=False), nn.BatchNorm1d(out, affine=False))


def predictor(dim, bottleneck):
    """SimSiam's prediction MLP, a bottleneck."""
    return nn.Sequential(nn.Linear(dim, bottleneck, bias=False), nn.BatchNorm1d(bottleneck),
                         nn.ReLU(inplace=True), nn.Linear(bottleneck, dim))


class ClusterHead(nn.Module):
    """phi(x) = softmax(scale * cos(r, w_k)): a cosine classifier over K cluster prototypes, which
    start at the k-means centroids of the features it is trained on (`init_from`)."""

    def __init__(self, dim, k, scale=5.0):
        super().__init__()
        self.weight = nn.Parameter(F.normalize(torch.randn(k, dim), dim=1))
        self.scale = scale
        self.out_features = k

    def forward(self, r):
        return self.scale * F.normalize(r, dim=-1) @ F.normalize(self.weight, dim=-1).T

    @torch.no_grad()
    def init_from(self, features, seed=0):
        x = F.normalize(torch.from_numpy(np.array(features, dtype=np.float32)), dim=1)
        assign = torch.from_numpy(kmeans(x.numpy(), self.out_features, seed))
        centres = F.normalize(torch.zeros(self.weight.shape).index_add_(0, assign, x), dim=1)
        self.weight.copy_(centres.to(self.weight.device))
        return assign


class URE(nn.Module):
    """Encoder + Siamese heads (+ a cluster head once K is set): one state dict for every stage."""

    def __init__(self, bert, proj_dim, pred_dim, k=None, pooling="both", context_dims=0):
        super().__init__()
        self.encoder = RelationEncoder(bert, pooling, context_dims)
        self.projector = projector(self.encoder.dim, proj_dim)
        self.predictor = predictor(proj_dim, pred_dim)
        self.cluster_head = ClusterHead(self.encoder.dim, k) if k else None

    def siamese(self, r1, r2):
        """Symmetric negative cosine between each view's prediction and the other's stopped projection."""
        z1, z2 = self.projector(r1), self.projector(r2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = -(F.cosine_similarity(p1, z2.detach()).mean() + F.cosine_similarity(p2, z1.detach()).mean()) / 2
        return loss, z1.detach()


def scan_loss(anchor_logits, neighbor_logits, entropy_weight):
    """(total, consistency, entropy) of the SCAN loss for a batch of (instance, neighbour) pairs."""
    pa, pn = anchor_logits.softmax(-1), neighbor_logits.softmax(-1)
    consistency = -torch.log((pa * pn).sum(-1).clamp_min(1e-8)).mean()
    mean = pa.mean(0)
    entropy = -(mean * torch.log(mean.clamp_min(1e-8))).sum()
    return consistency - entropy_weight * entropy, consistency, entropy


def knn_vote(probs, neighbor_probs):
    """The kNN vote (not in the paper; README, "Choices"): an instance's cluster probabilities averaged
    with those of its n neighbours, (p + sum_j p_j) / (n + 1), from probs [N, K] and neighbor_probs
    [N, n, K].  SCAN's premise is that an instance and its mined neighbours share a cluster; the head, a
    cosine classifier, draws its borders as planes, and the vote moves an instance across one where most
    of its neighbours lie on the other side.  train_cluster.py applies it --vote-steps times over the
    training instances' neighbours; predict.py once more, for a new instance over its nearest training
    instances."""
    return (probs + neighbor_probs.sum(1)) / (neighbor_probs.shape[1] + 1)


def z_rank(z):
    """The collapse measure: the effective rank (Roy & Vetterli 2007: exp of the entropy of the normalised
    singular values) of a batch of L2-normalised projections, as a share of the largest it can be,
    min(batch, d).  About 1 when z spans as many directions as the batch allows; 1/min(batch, d) when
    every z lies on one line.  The projector ends in BatchNorm, which gives every dimension of z unit
    variance whatever the encoder does, so SimSiam's std of z/|z| is about 1 even then; what BatchNorm
    allows, and this measures, is z spanning few directions (dimensional collapse)."""
    s = torch.linalg.svdvals(F.normalize(z.detach().float(), dim=-1))
    if s.sum() == 0:
        return 0.0
    p = s / s.sum()
    return (torch.exp(-(p * p.clamp_min(1e-30).log()).sum()) / min(z.shape)).item()


def kmeans(x, k, seed=0, restarts=10, iters=100):
    """Lloyd's k-means with k-means++ seeding (Arthur & Vassilvitskii 2007); the best of `restarts`
    runs by inertia.  Returns cluster ids (int64 [N])."""
    x = torch.from_numpy(np.array(x, dtype=np.float32))
    n = x.shape[0]
    if not 1 <= k <= n:
        raise DataError(f"k-means: K = {k} but there are {n} instances")
    g = torch.Generator().manual_seed(seed)
    sq = (x * x).sum(1)
    best, best_inertia = None, float("inf")
    for _ in range(restarts):
        centres = x[torch.randint(n, (1,), generator=g)]
        d2 = (sq - 2 * x @ centres[0] + centres[0] @ centres[0]).clamp_min(0)
        for _ in range(1, k):  # k-means++: next centre drawn with probability ~ squared distance
            i = torch.multinomial(d2 + 1e-12, 1, generator=g)
            centres = torch.cat([centres, x[i]])
            d2 = torch.minimum(d2, (sq - 2 * x @ x[i][0] + sq[i]).clamp_min(0))
        assign = None
        for _ in range(iters):
            dist = sq[:, None] - 2 * x @ centres.T + (centres * centres).sum(1)[None, :]
            new = dist.argmin(1)
            if assign is not None and torch.equal(new, assign):
                break
            assign = new
            counts = torch.bincount(assign, minlength=k)
            sums = torch.zeros_like(centres).index_add_(0, assign, x)
            filled = counts > 0  # an emptied cluster keeps its old centre
            centres[filled] = sums[filled] / counts[filled, None]
        inertia = dist.gather(1, assign[:, None]).sum().item()
        if inertia < best_inertia:
            best, best_inertia = assign, inertia
    return best.numpy()


LDA_DIMS, LDA_SHRINK = 64, 3.0  # the best of 32-256 directions and shrinkage 1-100 on a FewRel training sample
                                # for the relation-context LDA (NOTES.md, "A linear look at r")


def lda_map(x, groups, dims=LDA_DIMS, shrink=LDA_SHRINK):
    """Linear discriminant analysis of the rows of x (float [N, D]) by `groups` (an id per row, -1 for
    none): the `dims` directions in which x varies most against its variation inside groups, the
    within-group covariance shrunk towards `shrink` times its mean variance; only groups of two rows or
    more count.  Returns (mean [D], map [D, dims]); a row is mapped as (x - mean) @ map.  With encode.py's
    relation-context groups in place of relations it reads no label: the context map of RelationEncoder
    (train_siamese.fit_context_map) and evaluate.py's reference row "k-means, frozen + context LDA"
    (README, "Results"); bench/ceiling.py also fits it to gold relations."""
    x = np.asarray(x, np.float64)
    groups = np.asarray(groups)
    ids, counts = np.unique(groups[groups >= 0], return_counts=True)
    ids = ids[counts > 1]
    rows = np.isin(groups, ids)
    if not rows.any():
        raise DataError("LDA: no group holds two instances")
    within = x[rows].copy()
    for g in ids:
        within[groups[rows] == g] -= x[groups == g].mean(0)
    sw = within.T @ within / len(within)
    sw += shrink * np.trace(sw) / len(sw) * np.eye(len(sw))
    mean = x.mean(0)
    st = (x - mean).T @ (x - mean) / len(x)
    w = np.linalg.inv(np.linalg.cholesky(sw))  # w sw w' = I: the problem becomes an ordinary eigenproblem
    _, v = np.linalg.eigh(w @ st @ w.T)
    return mean, w.T @ v[:, ::-1][:, :dims]
