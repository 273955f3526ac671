"""The ``voxlink`` command: one entry point for data, training, evaluation, edge, ground and benchmarks."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="voxlink: image compression made for 3D reconstruction.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Make and inspect multi-view datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
export_app = typer.Typer(help="Export the edge encoder: PyTorch -> ONNX -> TensorRT.", no_args_is_help=True)
app.add_typer(export_app, name="export")
bench_app = typer.Typer(help="Reproduce the paper's comparison: accuracy (Fig. 8) and speed (Tab. III).",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")
codec_app = typer.Typer(help="N_small image codes of the sequential and direct models: compress views, decode PNGs.",
                        no_args_is_help=True)
app.add_typer(codec_app, name="codec")

log = logging.getLogger("voxlink")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("OpenGL", "trimesh", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(msg: str, code: int = 2) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    _setup_logging(verbose)


@data_app.command("make")
def data_make(
    out: str = typer.Option(..., "--out", help="Output dataset folder."),
    procedural: int = typer.Option(0, "--procedural", help="Number of procedural objects."),
    meshes: Optional[list[Path]] = typer.Option(None, "--meshes", help="Mesh files or folders (OBJ/PLY/OFF/GLB): several after one flag, or the flag repeated."),
    views: int = typer.Option(24, "--views", help="Views per object."),
    size: int = typer.Option(128, "--size", help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Master seed (everything is deterministic from it)."),
    workers: int = typer.Option(1, "--workers", help="Parallel worker processes."),
    up: str = typer.Option("y", "--up", help="Up axis of the mesh files: y or z."),
    mesh_split: str = typer.Option("test", "--mesh-split", help="Split of real meshes: test, train, val, auto (as procedural objects) or trainval (90 % train, 10 % val)."),
    fmt: str = typer.Option("sharded", "--format", help="sharded (manifest.json + shards/) or npz (one interchange .npz per object; README: Data format)."),
) -> None:
    """Generate a dataset: renders (RGB, depth, mask, K, pose) and 32^3 occupancy per object."""
    from voxlink.data.make import MakeConfig, make_dataset, plan_jobs
    from voxlink.data.meshes import find_meshes

    if up not in ("y", "z"):
        _fail(f"--up must be y or z, got {up!r}")
    try:
        mesh_files = find_meshes(meshes or [])
    except FileNotFoundError as e:
        _fail(str(e))
    if meshes and not mesh_files:
        _fail(f"no mesh files (.obj .ply .off .glb .gltf .stl) under {', '.join(map(str, meshes))}")
    try:
        jobs = plan_jobs(procedural, mesh_files, seed, up=up)
        cfg = MakeConfig(views=views, size=size, seed=seed, mesh_split=mesh_split)
        stats = make_dataset(out, jobs, cfg, workers=workers, fmt=fmt)
    except (ValueError, OSError) as e:
        _fail(str(e))
    tot = stats["load_s"] + stats["render_s"] + stats["voxelize_s"]
    share = (lambda k: 100.0 * stats[k] / tot) if tot > 0 else (lambda k: 0.0)
    typer.echo(f"wrote {stats['objects']} objects to {out} in {stats['seconds']:.1f} s: "
               f"{stats['objects_per_s']:.2f} objects/s ({views} views of {size}x{size}); "
               f"time shares: render {share('render_s'):.0f} %, voxelize {share('voxelize_s'):.0f} %, "
               f"load/build {share('load_s'):.0f} %")
    if stats["failed"]:
        typer.secho(f"{len(stats['failed'])} object(s) skipped:", fg=typer.colors.YELLOW, err=True)
        for m in stats["failed"]:
            typer.echo(f"  {m}", err=True)
        if not stats["objects"]:
            raise typer.Exit(1)


@data_app.command("import")
def data_import(
    images: Path = typer.Option(..., "--images", help="Folder of the capture's images (any size)."),
    poses: Path = typer.Option(..., "--poses", help="Camera-to-world 4x4 OpenCV poses: .json ([{image, pose, K?}]) or .txt (NAME + 16 numbers a line)."),
    out: Path = typer.Option(..., "--out", help="The object file to write (.npz)."),
    intrinsics: Optional[Path] = typer.Option(None, "--intrinsics", help="K.json ({\"K\": 3x3} or fx, fy, cx, cy; optional width, height); not needed if every pose has K."),
    depth: Optional[Path] = typer.Option(None, "--depth", help="Folder of depth maps: NAME.png (16-bit, millimetres) or NAME.npy (metres)."),
    masks: Optional[Path] = typer.Option(None, "--masks", help="Folder of masks NAME.png (nonzero = object)."),
    mesh: Optional[Path] = typer.Option(None, "--mesh", help="The object's mesh in the poses' world frame: gives the occupancy grid."),
    up: str = typer.Option("y", "--up", help="The world's up axis: y or z."),
    category: str = typer.Option("other", "--category", help="Category name."),
    name: Optional[str] = typer.Option(None, "--name", help="Object name (default: the images folder's name)."),
    split: Optional[str] = typer.Option(None, "--split", help="train, val or test (default: none in the file; read as test)."),
    depth_scale: float = typer.Option(0.001, "--depth-scale", help="Metres per unit of a PNG depth map."),
) -> None:
    """Convert your own multi-view capture (images, poses, intrinsics, optional depth / masks / mesh) into one interchange .npz."""
    from voxlink.data.capture import import_capture
    from voxlink.data.meshes import MeshLoadError

    if out.suffix.lower() != ".npz":
        _fail(f"--out must name a .npz file, got {out}")
    try:
        r = import_capture(images, poses, out, intrinsics=intrinsics, depth=depth, masks=masks, mesh=mesh, up=up,
                           category=category, name=name, split=split, depth_scale=depth_scale)
    except (FileNotFoundError, ValueError, MeshLoadError) as e:
        _fail(str(e))
    K = r["K"]
    typer.echo(f"wrote {r['out']}: {r['views']} views, K fx={K[0, 0]:.2f} fy={K[1, 1]:.2f} cx={K[0, 2]:.2f} "
               f"cy={K[1, 2]:.2f}, world scale {r['scale']:.4g}, occupancy "
               f"{'from the mesh' if r['has_occupancy'] else 'unknown (no --mesh): left out of training and scoring'}")
    if r["skipped_images"]:
        typer.secho(f"{len(r['skipped_images'])} image(s) without a pose skipped", fg=typer.colors.YELLOW, err=True)


@data_app.command("show")
def data_show(
    root: Path = typer.Argument(..., help="Dataset folder."),
    out: Path = typer.Option(Path("sheet.png"), "--out", help="Output PNG."),
    objects: int = typer.Option(6, "--objects", help="Objects (rows) to show."),
) -> None:
    """Write a contact sheet (RGB, depth, mask and the voxel grid) for a few objects."""
    from voxlink.data.sheet import contact_sheet
    from voxlink.data.store import DatasetError

    try:
        path = contact_sheet(root, out, n_objects=objects)
    except DatasetError as e:
        _fail(str(e))
    typer.echo(f"wrote {path}")


@app.command("train")
def train_cmd(
    config: str = typer.Option(..., "--config", help="Training TOML (voxlink/configs/*.toml) or a model config name."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/<model name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run folder's checkpoint."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Override the number of steps."),
    data: Optional[Path] = typer.Option(None, "--data", help="Override the dataset folder."),
) -> None:
    """Train a model (implicit, pose-aware fusion, or the N_small image codec: the config says which); writes checkpoints, a log and a model.safetensors with its config."""
    import dataclasses

    from voxlink.models.config import CONFIGS
    from voxlink.models.fusion import FUSION_CONFIGS, FusionConfig
    from voxlink.train import TrainConfig, load_train_config, train

    try:
        if config in CONFIGS:
            from voxlink.models.config import get_config

            mcfg, tcfg = get_config(config), TrainConfig()
        elif config in FUSION_CONFIGS:
            mcfg, tcfg = dataclasses.replace(FUSION_CONFIGS[config]), TrainConfig()
        else:
            mcfg, tcfg = load_train_config(config)
    except (OSError, ValueError) as e:
        _fail(f"bad config {config}: {e}")
    if steps is not None:
        tcfg = dataclasses.replace(tcfg, steps=steps)
    if data is not None:
        tcfg = dataclasses.replace(tcfg, data=str(data))
    if tcfg.make_data and not (Path(tcfg.data) / "manifest.json").is_file() and \
            (Path(tcfg.data).is_file() or any(Path(tcfg.data).glob("*.npz"))):
        tcfg = dataclasses.replace(tcfg, make_data={})  # a folder of interchange .npz files is a dataset already
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            _fail("--device cuda: no CUDA device (this torch build or machine has none)")
    out = out or Path("runs") / mcfg.name
    from voxlink.data.store import DatasetError

    try:
        from voxlink.models.rnn_compress import CompressionConfig

        if isinstance(mcfg, CompressionConfig):
            from voxlink.train_codec import train_codec

            path = train_codec(mcfg, tcfg, out, resume=resume, command=" ".join(["voxlink"] + sys.argv[1:]))
        elif isinstance(mcfg, FusionConfig):
            from voxlink.train_fusion import train_fusion

            path = train_fusion(mcfg, tcfg, out, resume=resume, device=device,
                                command=" ".join(["voxlink"] + sys.argv[1:]))
        else:
            path = train(mcfg, tcfg, out, resume=resume, device=device, command=" ".join(["voxlink"] + sys.argv[1:]))
    except (DatasetError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"wrote {path}")


@app.command("eval")
def eval_cmd(
    model: Optional[str] = typer.Argument(None, help="Model file or shipped name (default: the shipped default)."),
    data: Path = typer.Option(..., "--data", help="Dataset folder (any voxlink dataset, e.g. from --meshes)."),
    views: int = typer.Option(5, "--views", min=1, max=24, help="Views fused per object (scores 1..V)."),
    split: str = typer.Option("test", "--split", help="train, val, test or all."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write report.json here."),
    max_objects: Optional[int] = typer.Option(None, "--max-objects", help="Cap the number of objects."),
    heading: Optional[str] = typer.Option(None, "--heading",
                                          help="canonical (as authored) or random (a seeded yaw per object, as in "
                                               "the field); default: random for pose-aware models, else canonical."),
    pose_noise_deg: float = typer.Option(0.0, "--pose-noise-deg", help="Rotation error of every view's pose, degrees."),
    pose_noise_m: float = typer.Option(0.0, "--pose-noise-m", help="Position error of every view's pose, metres."),
    refine_poses: bool = typer.Option(False, "--refine-poses",
                                      help="Correct the poses by silhouette coherence before fusing (pose-aware "
                                           "models; as the ground with --refine-poses). About 3 s an object at 5 views."),
    precision: str = typer.Option("auto", "--precision",
                                  help="The pose-aware model's view decoder and 3D refiner on the CPU: auto (bfloat16 where "
                                       "the CPU has it natively, as the ground runs them), bfloat16 or float32."),
) -> None:
    """mIoU per number of views and per category, depth metrics, compression; beside the trivial baseline."""
    import json

    from voxlink.data.store import DatasetError
    from voxlink.evaluate import evaluate, format_report
    from voxlink.models.fusion import INFERENCE_PRECISIONS
    from voxlink.models.pose_refine import PoseRefineConfig
    from voxlink.weights import ModelFileError, load_model

    if precision not in INFERENCE_PRECISIONS:
        _fail(f"--precision {precision!r}: use {', '.join(INFERENCE_PRECISIONS)}")
    if max_objects is not None and max_objects < 1:
        _fail(f"--max-objects {max_objects}: at least 1")
    try:
        m, meta, extra = load_model(model)
    except ModelFileError as e:
        _fail(str(e))
    if getattr(m, "family", "implicit") not in ("implicit", "fusion"):
        _fail(f"{model} is a {m.family} model: voxlink eval scores the implicit and fusion models (the image "
              f"codec: voxlink bench codec; sequential and direct models: voxlink bench accuracy)")
    if hasattr(m, "inference_precision"):
        m.inference_precision = precision
    baseline = None
    if "mean_grid" in extra:
        baseline = (extra["mean_grid"], float(extra["baseline_threshold"][0]))
    try:
        report = evaluate(m, data, split=split, views=views, baseline=baseline, max_objects=max_objects,
                          progress=True, heading=heading, pose_noise=(pose_noise_deg, pose_noise_m),
                          refine_poses=PoseRefineConfig() if refine_poses else None)
    except (DatasetError, ValueError) as e:
        _fail(str(e))
    report["model_file"] = str(model)
    report["model_git_commit"] = meta.get("git_commit")
    typer.echo(format_report(report))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
        typer.echo(f"wrote {out}")


@export_app.command("onnx")
def export_onnx_cmd(
    model: Optional[str] = typer.Argument(None, help="Model file or shipped name (default: the shipped default)."),
    out: Path = typer.Option(Path("encoder.onnx"), "--out", help="ONNX file to write."),
    check_meshes: Optional[list[Path]] = typer.Option(None, "--check-meshes",
                                                      help="Meshes whose rendered views check parity (default: shipped)."),
) -> None:
    """E_K + sign as ONNX (static 128 x 128, dynamic batch), checked against PyTorch in ONNX Runtime."""
    from export.onnx_export import export_onnx, onnx_parity
    from voxlink.weights import ModelFileError, load_model

    try:
        m, _, _ = load_model(model)
    except ModelFileError as e:
        _fail(str(e))
    path = export_onnx(m, out)
    views = _parity_views(check_meshes)
    rep = onnx_parity(m, path, views)
    typer.echo(f"wrote {path} ({m.cfg.code_bits}-bit codes, fingerprint {bytes.hex(m.fingerprint())}); ONNX Runtime vs "
               f"PyTorch on {rep['views']} views: {rep['mismatched_bits']} of {rep['bits']} bits differ "
               f"({rep['mismatched_views']} views)")
    if rep["mismatched_bits"] > max(1, rep["bits"] // 10000):
        _fail("ONNX Runtime codes differ from PyTorch's beyond the bound (1 bit in 10,000)", 1)


def _parity_views(meshes):
    """Views (float [N, 3, 128, 128]) rendered around real meshes and procedural objects, for parity checks."""
    from voxlink.data.make import Job, MakeConfig, make_object
    from voxlink.data.meshes import ASSET_MESHES, find_meshes
    from voxlink.preprocess import to_input

    files = find_meshes(meshes or [ASSET_MESHES])[:4]
    jobs = [Job(index=i, kind="mesh", path=str(p)) for i, p in enumerate(files)]
    jobs += [Job(index=100 + i, kind="procedural", category=c, shape_seed=i) for i, c in enumerate(("chair", "car", "lamp", "table"))]
    rgb = [make_object(j, MakeConfig(views=4, seed=5))["arrays"]["rgb"] for j in jobs]
    import numpy as np

    return to_input(np.concatenate(rgb))


@export_app.command("trt")
def export_trt_cmd(
    onnx_file: Path = typer.Argument(..., help="Encoder ONNX from `voxlink export onnx`."),
    out: Path = typer.Option(Path("encoder.engine"), "--out", help="Engine file (metadata beside it as .json)."),
    fp16: bool = typer.Option(False, "--fp16", help="FP16 (TensorRT 10: builder flag; 11: ModelOpt AutoCast)."),
    int8: bool = typer.Option(False, "--int8", help="INT8 (TensorRT 10: entropy calibrator; 11: Q/DQ)."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration images folder or voxlink dataset."),
) -> None:
    """Build a TensorRT engine for the edge encoder (needs TensorRT and an NVIDIA GPU)."""
    from export.trt import TrtUnavailable, build_engine

    if not onnx_file.is_file():
        _fail(f"no ONNX file at {onnx_file}")
    try:
        meta = build_engine(onnx_file, out, fp16=fp16, int8=int8, calib=calib)
    except TrtUnavailable as e:
        _fail(str(e), 3)
    except (ValueError, RuntimeError) as e:
        _fail(str(e), 1)
    typer.echo(f"wrote {out} ({meta['precision']}, TensorRT {meta['tensorrt']}, {meta['code_bits']}-bit codes) and {out}.json")


@app.command("edge")
def edge_cmd(
    source: Optional[str] = typer.Option(None, "--source", help="Camera index, video, RTSP URL, GStreamer pipeline, image folder, or orbit:MESH."),
    connect: Optional[list[str]] = typer.Option(None, "--connect", help="ZeroMQ endpoint(s) of the ground, e.g. tcp://HOST:5555."),
    bind: Optional[list[str]] = typer.Option(None, "--bind", help="Bind instead (the ground connects)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name or file (default: the shipped default, fusion-k1024)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="auto, tensorrt, onnxruntime or torch."),
    onnx: Optional[str] = typer.Option(None, "--onnx", help="Encoder ONNX for ONNX Runtime."),
    engine: Optional[str] = typer.Option(None, "--engine", help="TensorRT engine."),
    object_id: Optional[int] = typer.Option(None, "--object-id", help="Object id sent with the codes."),
    stream_id: Optional[int] = typer.Option(None, "--stream-id", help="This drone's stream id (0..255)."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Frame rate cap."),
    socket: Optional[str] = typer.Option(None, "--socket", help="pub (default) or push."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", help="Stop after N frames."),
    log_dir: Optional[str] = typer.Option(None, "--log-dir", help="Local code log folder."),
    backchannel: Optional[list[str]] = typer.Option(None, "--backchannel", help="The ground's back-channel endpoint (its --backchannel), e.g. tcp://HOST:5556: gaps are asked back from the code log."),
    curve_server_key: Optional[str] = typer.Option(None, "--curve-server-key", help="CURVE: the ground's public key (z85) or its .key file."),
    curve_secret: Optional[str] = typer.Option(None, "--curve-secret", help="CURVE: this drone's .key_secret file (voxlink keys)."),
    iterations: Optional[int] = typer.Option(None, "--iterations", "-n", help="Sequential or direct model: N_small iterations per view, N x 128 bytes (0: the model's N_max; with --psnr, the most)."),
    psnr: Optional[float] = typer.Option(None, "--psnr", help="Sequential or direct model: variable rate, each view stops at the first iteration whose decoded image reaches this PSNR (dB)."),
    allow_unverified: Optional[bool] = typer.Option(None, "--allow-unverified", help="Accept an ONNX graph or TensorRT engine that does not record which model it was built from."),
    config: Optional[Path] = typer.Option(None, "--config", help="edge.toml (command-line options win)."),
) -> None:
    """The drone daemon: capture, encode each frame to K bits, stream over ZeroMQ, log locally."""
    from edge.daemon import EdgeConfig, EdgeDaemon
    from edge.sources import SourceError
    from voxlink.backends import BackendUnavailable
    from voxlink.modelfile import ModelFileError  # torch-free (voxlink.weights would import torch)

    over = dict(source=source, connect=connect or None, bind=bind or None, model=model, backend=backend, onnx=onnx,
                engine=engine, object_id=object_id, stream_id=stream_id, fps=fps, socket=socket, max_frames=max_frames,
                log_dir=log_dir, backchannel=backchannel or None, curve_server_key=curve_server_key,
                curve_secret_file=curve_secret, iterations=iterations, psnr_db=psnr,
                allow_unverified=True if allow_unverified else None)
    try:
        if config:
            cfg = EdgeConfig.from_toml(config, **over)
        else:
            cfg = EdgeConfig(**{k: v for k, v in over.items() if v is not None})
        daemon = EdgeDaemon(cfg)
    except (OSError, ValueError, SourceError, BackendUnavailable, ModelFileError) as e:
        _fail(str(e))
    import zmq

    try:
        code = daemon.run()
    except (OSError, ValueError, zmq.ZMQError) as e:  # at start: an endpoint, the log folder, CURVE keys
        _fail(f"the edge cannot start: {e}")
    raise typer.Exit(code)




@app.command("ground")
def ground_cmd(
    bind: Optional[list[str]] = typer.Option(None, "--bind", help="Endpoint(s) to bind, e.g. tcp://*:5555 (drones connect)."),
    connect: Optional[list[str]] = typer.Option(None, "--connect", help="Drone endpoint(s) to connect to instead."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name or file (default: the shipped default, fusion-k1024)."),
    out: Path = typer.Option(Path("ground-out"), "--out", help="Output folder (one subfolder per object)."),
    socket: str = typer.Option("sub", "--socket", help="sub (default, for PUB drones) or pull (for PUSH drones)."),
    idle_timeout: float = typer.Option(30.0, "--idle-timeout", help="Seconds without views before an object is written."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Stop after this many seconds."),
    viewer: Optional[str] = typer.Option(None, "--viewer", help="Serve the browser viewer on [HOST:]PORT."),
    backend: str = typer.Option("auto", "--backend", help="Decoder backend: auto, torch or onnxruntime."),
    backchannel: Optional[list[str]] = typer.Option(None, "--backchannel", help="Bind the gap-recovery ROUTER here, e.g. tcp://*:5556 (edges connect with --backchannel)."),
    curve_secret: Optional[str] = typer.Option(None, "--curve-secret", help="CURVE: this ground's .key_secret file (voxlink keys); needs --curve-allow."),
    curve_allow: Optional[str] = typer.Option(None, "--curve-allow", help="CURVE: folder of the drones' public .key files allowed to connect."),
    record: bool = typer.Option(True, "--record/--no-record", help="Keep the MCAP record in OUT/record and rebuild from it on start."),
    replay: Optional[Path] = typer.Option(None, "--replay", help="Apply a recorded MCAP session into OUT and exit (no network)."),
    record_depth: bool = typer.Option(True, "--record-depth/--no-record-depth",
                                      help="Also keep every view's depth image (16-bit PNG) in the MCAP record."),
    refine_poses: bool = typer.Option(False, "--refine-poses",
                                      help="Pose-aware model: make each grid at poses corrected by silhouette "
                                           "coherence (drones know their poses to a few degrees; about 3 s an "
                                           "object at 5 views)."),
    precision: str = typer.Option("auto", "--precision",
                                  help="Pose-aware model: its view decoder and 3D refiner on the CPU: auto (bfloat16 where "
                                       "the CPU has it natively), bfloat16 or float32 (the same grids on every machine)."),
    max_live_objects: int = typer.Option(256, "--max-live-objects", min=0,
                                         help="Objects kept in memory; beyond, those idle longest (all views in a "
                                              "snapshot) wait on disk until their next view. 0: no limit."),
    fused_depth: bool = typer.Option(True, "--fused-depth/--no-fused-depth",
                                     help="Pose-aware model: every snapshot also gets depth_fused.tar, each view's "
                                          "depth from the object's grid (about half the decoded depth's error; "
                                          "tens of ms a view at the snapshot)."),
) -> None:
    """The ground station: codes in; occupancy grids, depth maps, point clouds and meshes out (OUT/ground.json: every count)."""
    from ground.station import GroundConfig, GroundStation
    from voxlink.weights import ModelFileError

    if not bind and not connect:
        bind = ["tcp://*:5555"]
    try:
        st = GroundStation(GroundConfig(bind=bind or [], connect=connect or [], model=model, out=str(out),
                                        socket=socket, idle_timeout_s=idle_timeout, backend=backend,
                                        backchannel=backchannel or [], curve_secret_file=curve_secret,
                                        curve_allow_dir=curve_allow, record=record and replay is None,
                                        record_depth=record_depth, refine_poses=refine_poses,
                                        refiner_precision=precision, max_live_objects=max_live_objects,
                                        fused_depth=fused_depth))
    except (ModelFileError, ValueError, RuntimeError) as e:
        _fail(str(e))
    if replay is not None:
        if not replay.is_file():
            _fail(f"no recording {replay}")
        n = st.replay(replay)
        typer.echo(f"replayed {n} views of {len(st.sessions)} objects from {replay} into {out}")
        raise typer.Exit(0)
    server = None
    if viewer:
        from ground.viewer import ViewerServer

        host, _, port = viewer.rpartition(":")
        try:
            server = ViewerServer(st, host or "127.0.0.1", int(port)).start()
        except (ValueError, OSError, OverflowError) as e:  # OverflowError: a port over 65535
            _fail(f"cannot serve the viewer on {viewer!r}: {e}")
        typer.echo(f"viewer: http://{host or '127.0.0.1'}:{server.port}/")
    try:
        code = st.run(duration_s=duration)
    except (ValueError, OSError) as e:
        _fail(str(e))
    except Exception as e:  # zmq.ZMQError: an endpoint that cannot be bound
        _fail(f"{type(e).__name__}: {e}")
    if server:
        server.close()
    raise typer.Exit(code)


@app.command("keys")
def keys_cmd(
    name: str = typer.Argument(..., help="Key pair name, e.g. ground or drone1."),
    out: Path = typer.Option(Path("keys"), "--out", help="Folder for NAME.key (public) and NAME.key_secret."),
    stream: Optional[list[int]] = typer.Option(None, "--stream", min=0, max=255,
                                               help="A drone's stream id(s): the ground accepts only these from this key "
                                                    "(default: the first stream the drone sends becomes its own)."),
) -> None:
    """Make a CURVE key pair (zmq.auth certificates) for a ground or a drone."""
    from voxlink.net import make_key_pair

    try:
        pub, sec, public_key = make_key_pair(name, out, stream)
    except FileExistsError as e:
        _fail(f"{e}: choose another name or folder")
    except (RuntimeError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"public  {pub}  (z85 {public_key})")
    typer.echo(f"secret  {sec}  (keep it on this machine only)")
    if stream:
        typer.echo(f"streams {', '.join(str(x) for x in sorted(set(stream)))} (a ground accepts only these from this key)")




@app.command("demo")
def demo_cmd(
    mesh: Optional[list[Path]] = typer.Option(None, "--mesh", help="Mesh files or folders (default: the shipped real meshes)."),
    views: int = typer.Option(24, "--views", min=1, max=360, help="Views per drone orbit."),
    model: Optional[str] = typer.Option(None, "--model", help="Model file or shipped name (default: the shipped default, fusion-k1024)."),
    out: Path = typer.Option(Path("out/demo"), "--out", help="Output folder."),
    fps: float = typer.Option(10.0, "--fps", help="The simulated drone's frame rate (0 = as fast as it renders)."),
) -> None:
    """Main job: edge + ground on loopback over real meshes; prints IoU, depth, Chamfer, bytes, latency."""
    import json

    from voxlink.data.meshes import ASSET_MESHES, find_meshes
    from voxlink.demo import run_demo
    from voxlink.weights import ModelFileError, load_model

    try:
        load_model(model)
        files = find_meshes(mesh or [ASSET_MESHES])
    except (ModelFileError, FileNotFoundError) as e:
        _fail(str(e))
    if not files:
        _fail("no mesh files found")
    typer.echo(f"streaming a {views}-view drone orbit of {len(files)} real mesh(es): edge -> ZeroMQ -> ground ...")
    rows = run_demo(files, views=views, model=model, out=out, fps=fps)
    if not rows:
        _fail("no object could be reconstructed", 1)
    hdr = (f"{'object':<16} {'views':>5} {'bytes':>7} {'ratio':>7} {'IoU':>6} {'AbsRel':>7} {'fused':>6} {'Chamfer':>8} "
           f"{'lat p50':>8} {'p99 ms':>7}")
    typer.echo(hdr)
    for r in rows:
        typer.echo(f"{r['object'][:16]:<16} {r['views']:>5} {r['bytes']:>7} {r['ratio']:>6.0f}:1 {r['iou']:>6.3f} "
                   f"{r['depth_absrel']:>7.3f} {r['depth_absrel_fused']:>6.3f} {r['chamfer']:>8.4f} {r['latency_p50_ms']:>8.1f} {r['latency_p99_ms']:>7.1f}")
    miou = sum(r["iou"] for r in rows) / len(rows)
    typer.echo(f"mean IoU {miou:.3f} over {len(rows)} objects; files in {out / 'ground'}")
    typer.echo("AbsRel: each view's depth decoded from its code; fused: the same views' depth from the object's "
               "grid (depth_fused.tar)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps(rows, indent=1))


@bench_app.command("accuracy")
def bench_accuracy_cmd(
    data: Path = typer.Option(..., "--data", help="Dataset with train and test splits (voxlink data make)."),
    out: Path = typer.Option(Path("bench"), "--out", help="Output folder (models/ inside keeps trained models)."),
    profile: str = typer.Option("quick", "--profile", help="quick (2-core CPU, under 2 h), full (paper size, GPU) or tiny (tests)."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated subset of implicit,sequential,"
                                          "direct,jpeg2000,uncompressed,mean-grid,pose-aware."),
    seed: int = typer.Option(0, "--seed", help="Seed of training and evaluation."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated seeds (e.g. 0,1,2): one whole run "
                                        "per seed in OUT/seed-S, then accuracy-seeds.md / .json in OUT: mean, spread "
                                        "and paired gaps over the seeds. Replaces --seed."),
    retrain: bool = typer.Option(False, "--retrain", help="Train every model again, ignoring saved ones."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Training steps of every model (the 3D part's "
                                        "stage one for the sequential and direct models) instead of the profile's "
                                        "(quick: 1,080); saved models trained for another count are trained again."),
) -> None:
    """Fig. 8: mIoU vs compression ratio for every method; writes accuracy.csv, .png, .md (trains what is missing)."""
    import dataclasses

    from voxlink.bench import seeds as bench_seeds
    from voxlink.bench.accuracy import METHODS, run
    from voxlink.bench.profiles import get_profile
    from voxlink.data.store import DatasetError

    try:
        prof = get_profile(profile)
        if steps is not None and steps != prof.steps:  # named for its budget in every title and file
            prof = dataclasses.replace(prof, name=f"{prof.name}-{steps}", steps=steps)
        ms = tuple(m.strip() for m in methods.split(",")) if methods else METHODS
        if seeds is None:
            run(data, out, prof, methods=ms, seed=seed, retrain=retrain, device=device)
        else:
            try:
                seed_list = [int(x) for x in seeds.split(",") if x.strip()]
            except ValueError:
                raise ValueError(f"--seeds takes comma-separated integers, got {seeds!r}") from None
            if not seed_list or len(set(seed_list)) != len(seed_list):
                raise ValueError(f"--seeds takes distinct comma-separated integers, got {seeds!r}")
            for s in seed_list:
                run(data, bench_seeds.seed_folder(out, s), prof, methods=ms, seed=s, retrain=retrain, device=device)
            bench_seeds.write(out, seed_list)
    except (DatasetError, ValueError) as e:
        _fail(str(e))
    if seeds is not None:
        typer.echo((out / "accuracy-seeds.md").read_text())
        typer.echo(f"wrote {out / 'accuracy-seeds.md'}, {out / 'accuracy-seeds.json'} and a run per seed in "
                   f"{out}/seed-S")
        return
    typer.echo((out / "accuracy.md").read_text())
    typer.echo(f"wrote {out / 'accuracy.csv'}, {out / 'accuracy.png'}, {out / 'accuracy.md'}")


@bench_app.command("ground")
def bench_ground_cmd(
    drones: int = typer.Option(10, "--drones", min=1, max=256, help="Simulated drones (streams), one object each."),
    rate: float = typer.Option(2.0, "--rate", help="Views per second per drone."),
    seconds: float = typer.Option(30.0, "--seconds", help="How long the drones send."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name or file (default: the shipped default, fusion-k1024)."),
    out: Path = typer.Option(Path("bench/ground"), "--out", help="The ground's output folder and bench.json."),
    backend: str = typer.Option("torch", "--backend", help="The ground's decoder backend."),
    codes: str = typer.Option("real", "--codes", help="real: the model's codes of orbit views of the shipped real "
                                                      "meshes, with their poses; random: random codes."),
) -> None:
    """Drive a real ground (a subprocess) over loopback: views/s, latency p50/p99, CPU, peak memory, every count."""
    import json

    from voxlink.bench.ground import run_bench

    try:
        rep = run_bench(drones=drones, rate=rate, seconds=seconds, model=model, out=out, backend=backend, codes=codes)
    except (ValueError, RuntimeError) as e:
        _fail(str(e))
    typer.echo(json.dumps({k: v for k, v in rep.items() if k not in ("ground", "rss_series")}, indent=1))
    typer.echo(f"full report: {out / 'bench.json'}")
    if rep["views_lost"]:
        raise typer.Exit(1)


@bench_app.command("speed")
def bench_speed_cmd(
    out: Path = typer.Option(Path("bench"), "--out", help="Output folder."),
    size: str = typer.Option("paper", "--size", help="Network sizes: paper (Tab. III), cpu, quick or tiny."),
    backends: Optional[str] = typer.Option(None, "--backends", help="Comma-separated subset of torch-cpu,torch-cuda,"
                                           "onnxruntime-cpu,onnxruntime-cuda,tensorrt."),
    blocks: Optional[str] = typer.Option(None, "--blocks", help="Comma-separated subset of the blocks."),
    seconds: float = typer.Option(1.0, "--seconds", help="Minimum timing time per block and backend."),
) -> None:
    """Tab. III: forward time per block and backend, with ratios to the sequential model; writes speed.csv, .md."""
    from voxlink.bench.speed import run

    try:
        run(out, size=size, backends=backends.split(",") if backends else None,
            only=blocks.split(",") if blocks else None, min_seconds=seconds)
    except ValueError as e:
        _fail(str(e))
    typer.echo((out / "speed.md").read_text())
    typer.echo(f"wrote {out / 'speed.csv'}, {out / 'speed.md'}")


@bench_app.command("edge")
def bench_edge_cmd(
    python: Optional[list[Path]] = typer.Option(None, "--python", help="Interpreter(s) to measure, e.g. a torch-free "
                                                "edge venv's bin/python (default: this one); repeat the flag for several."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name or file (default: the shipped default, fusion-k1024)."),
    frames: int = typer.Option(50, "--frames", min=1, help="Timed frames per backend."),
    threads: Optional[list[int]] = typer.Option(None, "--threads", help="Intra-op threads for the encode timing "
                                                "(0 = the library's default); repeat for several (default: 1 and 0)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the measurements as JSON here."),
) -> None:
    """The drone's cost in one run: install size, start-up to the first code, encode ms/frame (ONNX Runtime CPU, PyTorch CPU)."""
    import json

    from edge.bench import run

    rows, text = run([str(p) for p in python] if python else None, model, frames, tuple(threads or (1, 0)))
    typer.echo(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1))
        typer.echo(f"wrote {out}")


@bench_app.command("fusion")
def bench_fusion_cmd(
    out: Path = typer.Option(Path("bench"), "--out", help="Output folder."),
    data: Optional[Path] = typer.Option(None, "--data", help="A training dataset, to time batch loading too."),
    models: str = typer.Option("implicit-k1024,fusion-k1024", "--models",
                               help="Comma-separated models whose ground decode time per view is compared."),
    threads: int = typer.Option(1, "--threads", min=1, help="torch threads for the training-step timings."),
) -> None:
    """The fusion model's training-step speed-ups side by side, and ground decode time per view against the implicit model."""
    from voxlink.bench.fusion import run
    from voxlink.weights import ModelFileError

    try:
        text = run(out, data=data, models=models.split(","), threads=threads)
    except (ModelFileError, ValueError) as e:
        _fail(str(e))
    typer.echo(text)
    typer.echo(f"wrote {out / 'fusion-speed.md'}")


@bench_app.command("codec")
def bench_codec_cmd(
    out: Path = typer.Option(Path("bench/codec"), "--out", help="Folder for codec.csv, codec.md, codec.json, codec.png."),
    model: str = typer.Option("nsmall-k1024", "--model", help="N_small model file or shipped name."),
    data: Path = typer.Option(Path("data/real"), "--data", help="Dataset of the real evaluation meshes."),
    views_per_object: int = typer.Option(3, "--views-per-object", min=1, max=24, help="Views of each object."),
    backgrounds: str = typer.Option("plain", "--backgrounds", help="plain (as rendered) or textured."),
) -> None:
    """Rate-distortion of the N_small image codec against JPEG 2000 at equal bytes: PSNR and MS-SSIM per view."""
    from voxlink.bench.codec import run
    from voxlink.data.store import DatasetError
    from voxlink.jpeg2000 import Jpeg2000Error
    from voxlink.weights import ModelFileError

    try:
        text = run(out, model=model, data=data, views_per_object=views_per_object, backgrounds=backgrounds)
    except (ModelFileError, DatasetError, Jpeg2000Error, ValueError) as e:
        _fail(str(e))
    typer.echo(text)
    typer.echo(f"wrote {out / 'codec.md'}, codec.csv, codec.json, codec.png")


_CODEC_MODEL_HELP = ("N_small model: a file or shipped name (default: the shipped nsmall-k1024), or a sequential or "
                     "direct model file from voxlink bench accuracy.")


@codec_app.command("compress")
def codec_compress_cmd(
    images: list[Path] = typer.Argument(..., help="Image files (centre-cropped and resized to the model's size)."),
    iterations: int = typer.Option(1, "--iterations", "-n", help="N_small iterations N: N x 128 bytes a view, 384/N : 1."),
    model: str = typer.Option("nsmall-k1024", "--model", help=_CODEC_MODEL_HELP),
    out: Path = typer.Option(Path("codes"), "--out", help="Folder for the .vxc code files (N x 128 bytes each)."),
) -> None:
    """Compress views to N_small codes (packed bits, N m / 8 bytes per view)."""
    import numpy as np
    from PIL import Image

    from voxlink.preprocess import capture_to_view, to_input

    comp = _codec_model(model)
    out.mkdir(parents=True, exist_ok=True)
    for f in images:
        try:
            rgb = np.asarray(Image.open(f).convert("RGB"))
        except OSError as e:
            _fail(f"cannot read {f}: {e}")
        view = capture_to_view(rgb, comp.cfg.image_size, bgr=False)
        try:
            payload = comp.compress(to_input(view[None].copy()), iterations)[0]
        except ValueError as e:
            _fail(str(e))
        dst = out / (f.stem + ".vxc")
        dst.write_bytes(payload)
        typer.echo(f"{f} -> {dst}: {len(payload)} bytes ({comp.compression_ratio(iterations):.0f}:1)")


@codec_app.command("decompress")
def codec_decompress_cmd(
    codes: list[Path] = typer.Argument(..., help=".vxc code files."),
    model: str = typer.Option("nsmall-k1024", "--model", help=_CODEC_MODEL_HELP),
    out: Path = typer.Option(Path("decoded"), "--out", help="Folder for the decoded PNG images."),
) -> None:
    """Decode N_small codes to viewable PNG images."""
    import numpy as np
    from PIL import Image

    comp = _codec_model(model)
    out.mkdir(parents=True, exist_ok=True)
    for f in codes:
        try:
            c = comp.decompress([f.read_bytes()])
        except (OSError, ValueError) as e:
            _fail(f"{f}: {e}")
        img = comp.decode(c)[0, -1].permute(1, 2, 0).mul(255).round().byte().numpy()
        dst = out / (f.stem + ".png")
        Image.fromarray(np.ascontiguousarray(img)).save(dst)
        typer.echo(f"{f} ({c.shape[1]} iterations) -> {dst}")


def _codec_model(name: str):
    """N_small from a codec model file (or shipped name), or the one inside a sequential or direct model (a
    model file, or a benchmark's model)."""
    from voxlink.weights import ModelFileError, load_model, read_model_info

    try:
        family = read_model_info(name).family
    except ModelFileError:
        family = None
    if family == "codec":
        return load_model(name)[0]
    if family in ("sequential", "direct"):  # a streaming model file: the N_small inside it
        return load_model(name)[0].compressor
    if family is not None:
        _fail(f"{name} is a {family} model; image codes need an N_small codec (e.g. nsmall-k1024)")
    from voxlink.bench.accuracy import open_bench_model

    try:
        model, meta = open_bench_model(Path(name))
    except (ValueError, OSError) as e:
        _fail(f"{name}: {e}")
    if meta.get("method") not in ("sequential", "direct"):
        _fail(f"{name} is a {meta.get('method')} model; image codes need a sequential or direct model")
    return model.compressor


#: Options that take several values after one flag (``--meshes a b c``) as well as repeated.
_MULTI_VALUE_OPTIONS = ("--meshes",)


def expand_multi_value(argv: list[str]) -> list[str]:
    """Rewrite ``--meshes a b c`` as ``--meshes a --meshes b --meshes c`` (typer takes repeated flags only).

    Values run until the next token that starts with ``-``; ``--meshes=a`` is left as it is.
    """
    out, i = [], 0
    while i < len(argv):
        tok = argv[i]
        out.append(tok)
        i += 1
        if tok in _MULTI_VALUE_OPTIONS:
            first = True
            while i < len(argv) and not argv[i].startswith("-"):
                if not first:
                    out.append(tok)
                out.append(argv[i])
                first = False
                i += 1
    return out


def main() -> None:
    """Console entry point (``voxlink``)."""
    app(args=expand_multi_value(sys.argv[1:]), prog_name="voxlink")


if __name__ == "__main__":
    sys.exit(main())
