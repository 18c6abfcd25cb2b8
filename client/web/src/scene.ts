// The 3D view: what client/viewer/src/app.rs draws, with three.js. The
// ground (the world's extent in green, the rest darker) with a grid whose
// heavy lines are the cell borders, zones as tinted areas with their names,
// landmarks as posts with labels, the static boxes and ramps, and avatars
// (a body, a head and a nose that shows the facing) with name labels and
// speech bubbles. Labels are DOM elements (three's CSS2DRenderer).
//
// Kept light for software GL: no shadows, no antialiasing, pixel ratio at
// most 1.5, Lambert or unlit materials, one geometry per kind of thing.

import * as THREE from "three";
import { CSS2DObject, CSS2DRenderer } from "three/examples/jsm/renderers/CSS2DRenderer.js";
import { cellBounds, shapeOf, worldBounds, type CellXZ, type WorldDef } from "./world";
import { distanceXZ, forward, type V3 } from "./vec";

/** Colours as in the native viewer (docs/client.md, "What is drawn"),
 * flat and unlit, so a test can find them in a screenshot. */
export const OTHER_PLAYER = 0xf27319; // (242, 115, 25)
export const OWN_PLAYER = 0x338cf2; // (51, 140, 242)
export const NPC = 0xd9cc40; // (217, 204, 64)
const SKY = 0x9ec7eb;
const GRASS = 0x5c8c4d;
const OUTSIDE = 0x405440;

/** Camera: 7 m behind the head, 1.5 m to the right, pitched by the mouse. */
const CAMERA_DISTANCE = 7;
const CAMERA_SHOULDER = 1.5;
/** Names show within this distance of the player; zone names within 150 m. */
const NAME_RANGE = 60;
const ZONE_LABEL_RANGE = 150;
const LANDMARK_LABEL_RANGE = 100;
const MAX_PIXEL_RATIO = 1.5;
/** Longest bubble text before it is cut. */
const BUBBLE_CHARS = 60;

export type AvatarKind = "own" | "player" | "npc";

interface Avatar {
  root: THREE.Group;
  label: CSS2DObject;
  bubble: CSS2DObject;
  bubbleUntil: number;
  kind: AvatarKind;
}

function el(cls: string, text = ""): HTMLDivElement {
  const d = document.createElement("div");
  d.className = cls;
  d.textContent = text;
  return d;
}

/** A stable colour per name (the native viewer's hash), for static boxes. */
function boxColour(name: string | null): THREE.Color {
  let h = 7;
  for (const b of new TextEncoder().encode(name ?? "")) h = (Math.imul(h, 31) + b) >>> 0;
  const t = (h % 100) / 100;
  return new THREE.Color().setRGB(0.7 + 0.2 * t, 0.62 + 0.1 * (1 - t), 0.52, THREE.SRGBColorSpace);
}

/** A pale tint per zone name. */
function zoneColour(name: string): THREE.Color {
  let h = 0;
  for (let i = 0; i < name.length; i++) h = (Math.imul(h, 33) + name.charCodeAt(i)) >>> 0;
  return new THREE.Color().setHSL((h % 360) / 360, 0.55, 0.6, THREE.SRGBColorSpace);
}

export class WorldScene {
  readonly renderer: THREE.WebGLRenderer;
  readonly labels: CSS2DRenderer;
  readonly scene = new THREE.Scene();
  readonly camera = new THREE.PerspectiveCamera(THREE.MathUtils.radToDeg(1.0), 1, 0.5, 2000);

  private worldGroup = new THREE.Group();
  private worldKey = "";
  private zoneLabels: CSS2DObject[] = [];
  private landmarkLabels: CSS2DObject[] = [];
  private readonly avatars = new Map<string, Avatar>();
  private readonly debugGroup = new THREE.Group();
  private readonly cellOutline: THREE.LineLoop;
  private readonly serverBox: THREE.LineSegments;
  private cellSize = 64;

  // Shared geometries and materials.
  private readonly unitBox = new THREE.BoxGeometry(1, 1, 1);
  private readonly bodyGeo = new THREE.BoxGeometry(0.7, 1.6, 0.7);
  private readonly bodyEdges = new THREE.EdgesGeometry(this.bodyGeo);
  private readonly headGeo = new THREE.SphereGeometry(0.32, 12, 8);
  private readonly noseGeo = new THREE.BoxGeometry(0.15, 0.15, 0.15);
  private readonly avatarMats: Record<AvatarKind, { body: THREE.Material; edge: THREE.Material; nose: THREE.Material }>;

  constructor(private readonly container: HTMLElement) {
    this.renderer = new THREE.WebGLRenderer({ antialias: false, powerPreference: "high-performance" });
    this.renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, MAX_PIXEL_RATIO));
    this.renderer.shadowMap.enabled = false;
    this.renderer.domElement.className = "view";
    container.appendChild(this.renderer.domElement);
    this.labels = new CSS2DRenderer();
    this.labels.domElement.className = "labels";
    container.appendChild(this.labels.domElement);

    this.scene.background = new THREE.Color(SKY);
    this.scene.fog = new THREE.Fog(SKY, 250, 900);
    this.scene.add(new THREE.HemisphereLight(0xdfeeff, 0x5a6a4a, 1.6));
    const sun = new THREE.DirectionalLight(0xffffff, 1.4);
    sun.position.set(0.4, 0.8, 0.3);
    this.scene.add(sun);
    this.scene.add(this.worldGroup);

    const mats = (colour: number) => {
      const c = new THREE.Color(colour);
      return {
        body: new THREE.MeshBasicMaterial({ color: c }),
        edge: new THREE.LineBasicMaterial({ color: c.clone().multiplyScalar(0.5) }),
        nose: new THREE.MeshBasicMaterial({ color: c.clone().multiplyScalar(0.4) }),
      };
    };
    this.avatarMats = { own: mats(OWN_PLAYER), player: mats(OTHER_PLAYER), npc: mats(NPC) };

    // Debug (F3): the current cell outlined in yellow, the server's
    // position of the own avatar as a white wire box.
    this.cellOutline = new THREE.LineLoop(
      new THREE.BufferGeometry().setFromPoints([
        new THREE.Vector3(0, 0, 0),
        new THREE.Vector3(1, 0, 0),
        new THREE.Vector3(1, 0, 1),
        new THREE.Vector3(0, 0, 1),
      ]),
      new THREE.LineBasicMaterial({ color: 0xffff00 }),
    );
    this.serverBox = new THREE.LineSegments(
      new THREE.EdgesGeometry(new THREE.BoxGeometry(0.8, 1.8, 0.8)),
      new THREE.LineBasicMaterial({ color: 0xffffff }),
    );
    this.debugGroup.add(this.cellOutline, this.serverBox);
    this.debugGroup.visible = false;
    this.scene.add(this.debugGroup);

    this.resize();
    window.addEventListener("resize", () => this.resize());
  }

  resize(): void {
    const w = Math.max(1, this.container.clientWidth);
    const h = Math.max(1, this.container.clientHeight);
    this.renderer.setSize(w, h);
    this.labels.setSize(w, h);
    this.camera.aspect = w / h;
    this.camera.updateProjectionMatrix();
  }

  get canvas(): HTMLCanvasElement {
    return this.renderer.domElement;
  }

  /** Builds the static world (again only if it changed). */
  setWorld(w: WorldDef): void {
    const key = JSON.stringify([w.name, w.cell_size, w.extent, w.zones, w.landmarks, w.statics]);
    if (key === this.worldKey) return;
    this.worldKey = key;
    this.clearWorld();
    this.cellSize = w.cell_size;
    const g = this.worldGroup;
    const [x0, z0, x1, z1] = worldBounds(w);
    const cx = (x0 + x1) / 2;
    const cz = (z0 + z1) / 2;

    // Ground: the extent in green on a darker plain around it (four
    // strips, so no pixel of the ground is drawn twice: software GL in
    // tests is bound by fill rate). Flat ground lit from above is one
    // colour, so it needs no lighting.
    const flat = (x: number, z: number, w: number, d: number, mat: THREE.Material) => {
      const m = new THREE.Mesh(new THREE.PlaneGeometry(w, d), mat);
      m.rotation.x = -Math.PI / 2;
      m.position.set(x, 0, z);
      g.add(m);
    };
    const far = 3000;
    // Pushed back in depth, so lines and zones on the ground never flicker.
    const groundMat = (color: number) =>
      new THREE.MeshBasicMaterial({ color, polygonOffset: true, polygonOffsetFactor: 2, polygonOffsetUnits: 2 });
    const outside = groundMat(OUTSIDE);
    flat(cx, z0 - far / 2, x1 - x0 + 2 * far, far, outside); // north
    flat(cx, z1 + far / 2, x1 - x0 + 2 * far, far, outside); // south
    flat(x0 - far / 2, cz, far, z1 - z0, outside); // west
    flat(x1 + far / 2, cz, far, z1 - z0, outside); // east
    flat(cx, cz, x1 - x0, z1 - z0, groundMat(GRASS));

    // Grid: cell borders bold, an eighth of a cell faint.
    const fine: number[] = [];
    const bold: number[] = [];
    const step = w.cell_size / 8;
    const lines = (from: number, to: number, at: (v: number, out: number[]) => void) => {
      const n = Math.round((to - from) / step);
      for (let i = 0; i <= n; i++) {
        const v = from + i * step;
        at(v, i % 8 === 0 ? bold : fine);
      }
    };
    lines(x0, x1, (x, out) => out.push(x, 0.03, z0, x, 0.03, z1));
    lines(z0, z1, (z, out) => out.push(x0, 0.03, z, x1, 0.03, z));
    const segs = (pts: number[], colour: number, opacity: number) => {
      const geo = new THREE.BufferGeometry();
      geo.setAttribute("position", new THREE.Float32BufferAttribute(pts, 3));
      return new THREE.LineSegments(
        geo,
        new THREE.LineBasicMaterial({ color: colour, transparent: true, opacity, depthWrite: false }),
      );
    };
    g.add(segs(fine, 0xffffff, 0.12), segs(bold, 0xffffff, 0.45));

    // Zones: tinted ground, outlined, named in the air over their centres.
    w.zones.forEach((z, i) => {
      const zx0 = Math.max(z.min_x ?? x0, x0);
      const zz0 = Math.max(z.min_z ?? z0, z0);
      const zx1 = Math.min(z.max_x ?? x1, x1);
      const zz1 = Math.min(z.max_z ?? z1, z1);
      if (!(zx1 > zx0 && zz1 > zz0)) return;
      const y = 0.01 + 0.002 * (w.zones.length - i);
      const colour = zoneColour(z.name);
      const area = new THREE.Mesh(
        new THREE.PlaneGeometry(zx1 - zx0, zz1 - zz0),
        new THREE.MeshBasicMaterial({
          color: colour,
          transparent: true,
          opacity: 0.22,
          depthWrite: false,
          polygonOffset: true,
          polygonOffsetFactor: 1,
          polygonOffsetUnits: 1,
        }),
      );
      area.rotation.x = -Math.PI / 2;
      area.position.set((zx0 + zx1) / 2, y, (zz0 + zz1) / 2);
      area.renderOrder = 1;
      g.add(area);
      const outline = new THREE.LineLoop(
        new THREE.BufferGeometry().setFromPoints([
          new THREE.Vector3(zx0, y + 0.02, zz0),
          new THREE.Vector3(zx1, y + 0.02, zz0),
          new THREE.Vector3(zx1, y + 0.02, zz1),
          new THREE.Vector3(zx0, y + 0.02, zz1),
        ]),
        new THREE.LineBasicMaterial({ color: colour, transparent: true, opacity: 0.8 }),
      );
      g.add(outline);
      const label = new CSS2DObject(el("label zone", z.name));
      label.position.set((zx0 + zx1) / 2, 6, (zz0 + zz1) / 2);
      g.add(label);
      this.zoneLabels.push(label);
    });

    // Landmarks: a post with a diamond on top, and the name.
    const postGeo = new THREE.CylinderGeometry(0.12, 0.12, 3, 6);
    const gemGeo = new THREE.OctahedronGeometry(0.45);
    const postMat = new THREE.MeshLambertMaterial({ color: 0x6b5a45 });
    const gemMat = new THREE.MeshBasicMaterial({ color: 0xffd75e });
    for (const l of w.landmarks) {
      const post = new THREE.Mesh(postGeo, postMat);
      post.position.set(l.pos.x, l.pos.y + 1.5, l.pos.z);
      const gem = new THREE.Mesh(gemGeo, gemMat);
      gem.position.set(l.pos.x, l.pos.y + 3.4, l.pos.z);
      g.add(post, gem);
      const label = new CSS2DObject(el("label landmark", l.name));
      label.position.set(l.pos.x, l.pos.y + 4.2, l.pos.z);
      g.add(label);
      this.landmarkLabels.push(label);
    }

    // Statics: boxes and ramps with their yaw (about +Y) and pitch (about
    // the shape's own X axis), R = R_y(yaw) R_x(pitch) as in world.rs.
    const rampMat = new THREE.MeshLambertMaterial({ color: new THREE.Color().setRGB(0.62, 0.55, 0.45, THREE.SRGBColorSpace) });
    const boxMats = new Map<string, THREE.MeshLambertMaterial>();
    for (const def of w.statics) {
      const s = shapeOf(def);
      let mat: THREE.Material = rampMat;
      if (s.kind === "box") {
        const c = boxColour(s.name);
        const k = c.getHexString();
        let m = boxMats.get(k);
        if (!m) {
          m = new THREE.MeshLambertMaterial({ color: c });
          boxMats.set(k, m);
        }
        mat = m;
      }
      const mesh = new THREE.Mesh(this.unitBox, mat);
      mesh.scale.set(2 * s.halfExtents.x, 2 * s.halfExtents.y, 2 * s.halfExtents.z);
      mesh.rotation.order = "YXZ";
      mesh.rotation.set(THREE.MathUtils.degToRad(s.pitchDeg), THREE.MathUtils.degToRad(s.yawDeg), 0);
      mesh.position.set(s.center.x, s.center.y, s.center.z);
      g.add(mesh);
    }
  }

  private clearWorld(): void {
    const disposed = new Set<unknown>();
    this.worldGroup.traverse((o) => {
      if (o instanceof CSS2DObject) o.element.remove();
      const m = o as Partial<THREE.Mesh>;
      if (m.geometry && m.geometry !== this.unitBox && !disposed.has(m.geometry)) {
        disposed.add(m.geometry);
        m.geometry.dispose();
      }
      const mats = m.material ? (Array.isArray(m.material) ? m.material : [m.material]) : [];
      for (const mat of mats) {
        if (!disposed.has(mat)) {
          disposed.add(mat);
          mat.dispose();
        }
      }
    });
    this.scene.remove(this.worldGroup);
    this.worldGroup = new THREE.Group();
    this.scene.add(this.worldGroup);
    this.zoneLabels = [];
    this.landmarkLabels = [];
  }

  /** Adds (or re-dresses) the avatar of entity `id`. */
  setAvatar(id: string, kind: AvatarKind, name: string): void {
    const old = this.avatars.get(id);
    if (old && old.kind === kind) {
      old.label.element.textContent = name;
      return;
    }
    if (old) this.removeAvatar(id);
    const mats = this.avatarMats[kind];
    const root = new THREE.Group();
    const body = new THREE.Mesh(this.bodyGeo, mats.body);
    body.position.y = 0.8;
    const edges = new THREE.LineSegments(this.bodyEdges, mats.edge);
    edges.position.y = 0.8;
    const head = new THREE.Mesh(this.headGeo, mats.body);
    head.position.y = 1.9;
    // The nose points along the local -Z axis, which the group's yaw turns.
    const nose = new THREE.Mesh(this.noseGeo, mats.nose);
    nose.position.set(0, 1.9, -0.35);
    root.add(body, edges, head, nose);
    const label = new CSS2DObject(el(kind === "npc" ? "label name npc" : "label name", name));
    label.position.y = 2.6;
    // The own name would sit on whoever stands ahead: not shown.
    label.visible = kind !== "own";
    const bubble = new CSS2DObject(el("bubble"));
    // Over the name; over the head for the own avatar, which has no name.
    bubble.position.y = kind === "own" ? 2.5 : 3.1;
    bubble.visible = false;
    root.add(label, bubble);
    this.scene.add(root);
    this.avatars.set(id, { root, label, bubble, bubbleUntil: 0, kind });
  }

  hasAvatar(id: string): boolean {
    return this.avatars.has(id);
  }

  avatarIds(): string[] {
    return [...this.avatars.keys()];
  }

  removeAvatar(id: string): void {
    const a = this.avatars.get(id);
    if (!a) return;
    a.label.element.remove();
    a.bubble.element.remove();
    this.scene.remove(a.root);
    this.avatars.delete(id);
  }

  clearAvatars(): void {
    for (const id of [...this.avatars.keys()]) this.removeAvatar(id);
  }

  /** Puts an avatar at `pos` facing `yaw` (radians, 0 = north, clockwise). */
  placeAvatar(id: string, pos: V3, yaw: number): void {
    const a = this.avatars.get(id);
    if (!a) return;
    a.root.position.set(pos.x, pos.y, pos.z);
    // A turn by θ about +Y takes -Z to (-sin θ, 0, -cos θ); facing `yaw`
    // is (sin yaw, 0, -cos yaw), so θ = -yaw.
    a.root.rotation.y = -yaw;
  }

  /** A speech bubble over `id` until `until` (seconds, the App's clock). */
  showBubble(id: string, text: string, until: number): void {
    const a = this.avatars.get(id);
    if (!a) return;
    const chars = [...text];
    a.bubble.element.textContent = chars.length > BUBBLE_CHARS ? chars.slice(0, BUBBLE_CHARS - 3).join("") + "..." : text;
    a.bubbleUntil = until;
    a.bubble.visible = true;
  }

  /** Per frame: label ranges around `me`, bubbles that ran out. */
  updateLabels(me: V3, now: number): void {
    for (const a of this.avatars.values()) {
      const near = distanceXZ(a.root.position, me) <= NAME_RANGE;
      a.label.visible = a.kind !== "own" && near;
      a.bubble.visible = near && now <= a.bubbleUntil;
    }
    for (const l of this.zoneLabels) l.visible = distanceXZ(l.position, me) <= ZONE_LABEL_RANGE;
    for (const l of this.landmarkLabels) l.visible = distanceXZ(l.position, me) <= LANDMARK_LABEL_RANGE;
  }

  /** The over-the-shoulder camera of the native viewer. */
  follow(pos: V3, yaw: number, pitch: number): void {
    const f = forward(yaw);
    const right = { x: -f.z, z: f.x };
    const head = new THREE.Vector3(pos.x, pos.y + 1.6, pos.z);
    this.camera.position.set(
      head.x - f.x * Math.cos(pitch) * CAMERA_DISTANCE + right.x * CAMERA_SHOULDER,
      head.y + Math.sin(pitch) * CAMERA_DISTANCE,
      head.z - f.z * Math.cos(pitch) * CAMERA_DISTANCE + right.z * CAMERA_SHOULDER,
    );
    this.camera.lookAt(head.x + f.x * 2, head.y, head.z + f.z * 2);
  }

  /** A slow circle over `centre` (behind the login form). */
  orbit(centre: V3, t: number): void {
    const a = t * 0.05;
    this.camera.position.set(centre.x + Math.sin(a) * 110, centre.y + 70, centre.z + Math.cos(a) * 110);
    this.camera.lookAt(centre.x, centre.y, centre.z);
  }

  /** The F3 helpers: the server's cell and the server's position. */
  setDebug(on: boolean, cell: CellXZ | null, serverPos: V3 | null): void {
    this.debugGroup.visible = on;
    if (!on) return;
    this.cellOutline.visible = cell !== null;
    if (cell) {
      const [x0, z0] = cellBounds(this.cellSize, cell);
      this.cellOutline.position.set(x0, 0.08, z0);
      this.cellOutline.scale.set(this.cellSize, 1, this.cellSize);
    }
    this.serverBox.visible = serverPos !== null;
    if (serverPos) this.serverBox.position.set(serverPos.x, serverPos.y + 0.9, serverPos.z);
  }

  render(): void {
    this.renderer.render(this.scene, this.camera);
    this.labels.render(this.scene, this.camera);
  }
}
