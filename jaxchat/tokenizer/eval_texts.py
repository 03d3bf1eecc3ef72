"""Built-in sample texts for tok_eval: a few paragraphs each of prose, code, math, Korean and science."""

from __future__ import annotations

NEWS = """\
The city council voted on Tuesday to expand the downtown bike-lane network, approving a plan that \
will add roughly 14 miles of protected lanes over the next three years. Supporters packed the \
chamber, many of them wearing bright yellow vests, and applauded when the measure passed 7 to 2.

"This is about giving people a safe choice," said council member Dana Whitfield, who sponsored the \
proposal. "Right now, a lot of residents would ride to work if they didn't feel like they were \
taking their life into their hands." Opponents argued that the $38 million price tag was too high \
at a time when the city faces a budget shortfall, and that removing parking spaces would hurt small \
businesses along Main Street.

Construction on the first phase, a 2.5-mile stretch connecting the university campus to the train \
station, is expected to begin in early spring. City engineers said they would publish detailed \
maps online and hold four public meetings before any work starts. The transportation department \
estimates that the new lanes could double the number of daily bike commuters by 2030.
"""

KOREAN = """\
서울시는 내년부터 대중교통 요금 체계를 개편한다고 발표했다. 새로운 제도에 따르면 한 달에 일정 금액을 \
내면 지하철과 버스를 무제한으로 이용할 수 있으며, 청년과 어르신에게는 추가 할인이 적용된다.

시 관계자는 "교통비 부담을 줄이고 자가용 이용을 줄이기 위한 정책"이라고 설명했다. 시민들의 반응은 \
대체로 긍정적이었지만, 일부에서는 재정 부담이 커질 수 있다는 우려도 나왔다.

한편 전문가들은 이번 정책이 성공하려면 배차 간격을 줄이고 환승 편의를 높이는 등 서비스 개선이 함께 \
이루어져야 한다고 지적했다. 시는 올해 말까지 시범 사업을 진행한 뒤 결과를 분석해 보완할 계획이다.
"""

CODE = '''\
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Inventory:
    """A tiny in-memory inventory with JSON persistence."""

    items: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, count: int = 1) -> None:
        if count <= 0:
            raise ValueError(f"count must be positive, got {count}")
        self.items[name] = self.items.get(name, 0) + count

    def remove(self, name: str, count: int = 1) -> bool:
        have = self.items.get(name, 0)
        if have < count:
            return False
        if have == count:
            del self.items[name]
        else:
            self.items[name] = have - count
        return True

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.items, indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> "Inventory":
        return cls(items=json.loads(path.read_text()))


if __name__ == "__main__":
    inv = Inventory()
    for word in ["apple", "pear", "apple", "fig"]:
        inv.add(word)
    print(sorted(inv.items.items(), key=lambda kv: (-kv[1], kv[0])))
'''

MATH = r"""\
\begin{theorem}[Cauchy--Schwarz]
For all vectors $u, v$ in an inner product space $V$ we have
\[
  |\langle u, v \rangle|^2 \le \langle u, u \rangle \cdot \langle v, v \rangle ,
\]
with equality if and only if $u$ and $v$ are linearly dependent.
\end{theorem}

\begin{proof}
If $v = 0$ both sides vanish. Otherwise let $\lambda = \langle u, v \rangle / \langle v, v \rangle$ and
consider $w = u - \lambda v$. Then $\langle w, v \rangle = 0$, so
\begin{align*}
  0 \le \|w\|^2 &= \langle u - \lambda v, u - \lambda v \rangle \\
                &= \|u\|^2 - \frac{|\langle u, v \rangle|^2}{\|v\|^2}.
\end{align*}
Multiplying by $\|v\|^2 > 0$ gives the claim. Equality holds iff $w = 0$, i.e. $u = \lambda v$.
\end{proof}

As a corollary, for real numbers $a_1, \dots, a_n$ and $b_1, \dots, b_n$,
$\left( \sum_{i=1}^{n} a_i b_i \right)^2 \le \left( \sum_{i=1}^{n} a_i^2 \right)\left( \sum_{i=1}^{n} b_i^2 \right)$,
and in particular $\mathbb{E}[XY]^2 \le \mathbb{E}[X^2]\,\mathbb{E}[Y^2]$ for random variables $X, Y$.
"""

SCIENCE = """\
Photosynthesis converts light energy into chemical energy stored in sugars. In the light-dependent \
reactions, which take place in the thylakoid membranes of the chloroplast, pigments such as \
chlorophyll a and b absorb photons, mostly in the blue (about 430-450 nm) and red (640-680 nm) parts \
of the spectrum. The absorbed energy drives electrons through an electron transport chain, pumping \
protons across the membrane; ATP synthase then uses this gradient to make ATP.

In the Calvin cycle, the enzyme RuBisCO fixes CO2 onto ribulose-1,5-bisphosphate. Overall, six \
molecules of carbon dioxide and six of water yield one molecule of glucose and six of oxygen: \
6 CO2 + 6 H2O -> C6H12O6 + 6 O2. Under hot, dry conditions RuBisCO also reacts with O2, a wasteful \
process called photorespiration; C4 and CAM plants such as maize and cacti have evolved ways to \
concentrate CO2 around the enzyme and limit these losses.
"""

EVAL_TEXTS: dict[str, str] = {
    "news": NEWS,
    "korean": KOREAN,
    "code": CODE,
    "math": MATH,
    "science": SCIENCE,
}
