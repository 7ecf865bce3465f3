from flows import PROJECT_ROOT
from prefect import flow
@flow(name="train-eval")
def train_eval(n: int = 1) -> int:
    return n
