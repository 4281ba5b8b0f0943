"""Score every (query model, gallery model) pair of embedding sets with faiss; log the matrix to MLflow.

Transformed entries (a new model through its T21, the old gallery through a T12) join the matrix
when ``--artifacts`` names the model and CMC artifacts that hold the transformations. A team's own
embeddings files (columns id, embedding, label) are scored with ``--external NAME=PATH``, their
label map given by ``--classes``; without an old model's artifact, ``--old NAME`` says which set
is the old model's and ``--old-classes`` which classes it was trained on."""

from __future__ import annotations

from jobs import cli
from pipeline.config import ScoreConfig


def main() -> None:
    parser = cli.job_parser("score", __doc__, out="report folder to write")
    parser.add_argument("--old-model", default=None, help="the old model's artifact (defines seen/unseen classes)")
    parser.add_argument("--old", default=None, help="without --old-model: the name of the old model's set")
    parser.add_argument("--old-classes", nargs="+", default=None,
                        help="with --old: the classes the old model was trained on, for the seen / unseen query "
                             "subsets (default: all classes, no subsets)")
    parser.add_argument("--embeddings", nargs="*", default=[], help="embeddings folders, one per model")
    parser.add_argument("--external", nargs="*", default=[], metavar="NAME=PATH",
                        help="a team's embeddings files (id, embedding, label), scored as model NAME")
    parser.add_argument("--classes", default=None, help="the label map of the --external sets: a JSON list file")
    parser.add_argument("--independent", default=None, help="name of the independent new model (update gain)")
    parser.add_argument("--artifacts", nargs="*", default=[],
                            help="model or CMC artifact folders whose transformations add matrix entries (mapped sets "
                                 "are written under OUT/embeddings)")
    defaults = ScoreConfig()
    parser.add_argument("--topk", type=int, nargs="+", default=defaults.topk,
                        help=ScoreConfig.model_fields["topk"].description)
    parser.add_argument("--split", default=defaults.split,
                        help="the split the embeddings encode (names the mapped sets' folders)")
    cli.add_search_args(parser)
    parser.add_argument("--in-ray", action="store_true", help=ScoreConfig.model_fields["in_ray"].description)
    cli.add_ray_arg(parser)
    cli.add_tracking_args(parser)
    args = parser.parse_args()
    from pipeline.encode.mapped import entries_from_files
    from pipeline.flows.workspace import Workspace
    from pipeline.score import MatrixRoles, roles_of, score_and_report

    options = cli.score_options(args, topk=args.topk, split=args.split, in_ray=args.in_ray)
    external = cli.external_sets(args.external, args.classes)
    if (args.old_model is None) == (args.old is None):
        raise ValueError("name the old model by its artifact (--old-model) or by its set's name (--old), one of them")
    if args.old_model is not None and args.old_classes is not None:
        raise ValueError("--old-classes goes with --old: with --old-model the classes are the artifact's")
    if not args.embeddings and not external:
        raise ValueError("nothing to score: give embeddings folders (--embeddings) or a team's files (--external)")
    if args.old_model is not None:
        roles = roles_of(args.old_model, args.independent)
    else:
        roles = MatrixRoles(old=args.old, old_classes=args.old_classes, independent=args.independent)
    entries = entries_from_files(args.embeddings, args.artifacts, roles.old, Workspace.at(args.out).embeddings_root,
                                 args.split, external)
    known = next(iter(entries.values())).embeddings.classes
    if roles.old_classes is not None and set(roles.old_classes) - set(known):
        raise ValueError(f"--old-classes {sorted(set(roles.old_classes) - set(known))} are not classes of the sets "
                         f"scored ({known})")
    if options.in_ray:
        from pipeline.runtime import init_ray

        init_ray(args.ray_address)
    print(score_and_report(entries, roles, options, args.out, cli.run_context(args)))


if __name__ == "__main__":
    cli.run_main(main)
